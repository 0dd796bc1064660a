"""FAL jobs: statuses and their transition tables, how an event applies, texts of outcomes."""
