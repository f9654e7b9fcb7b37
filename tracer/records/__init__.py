"""The nouns of a trace: frozen records, the words they are made of, schema v1 read back. Imports nothing above it."""
