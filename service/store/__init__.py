"""The shared database: engine, the one dialect seam, tables, migrations, users, training data."""
