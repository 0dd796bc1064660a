"""The aibots.kz avatar service: FAL AI webhook receiver, Telegram outbox and bot."""
