"""The FAL AI protocol: webhook signatures and key set, webhook bodies, comment metadata."""
