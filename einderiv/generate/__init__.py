"""Stage 6: generated code and printers for every output format."""
