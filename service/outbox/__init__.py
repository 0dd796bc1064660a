"""The outbox: queued notifications, their claims and states, and the loop that sends them."""
