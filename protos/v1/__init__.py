"""Generated protobuf modules for the fedge v1 wire format (do not edit by hand)."""
