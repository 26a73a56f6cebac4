"""Open chat task: placeholder, see issue 5."""
