"""The migrations, one a file, oldest first by their ``down_revision`` chain."""
