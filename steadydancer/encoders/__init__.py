"""encoders stage."""
