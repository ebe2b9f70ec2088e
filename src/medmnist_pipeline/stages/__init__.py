"""One thin module per DVC stage: read params, call library functions, write outputs."""
