//! Loads, pins and attaches the eBPF programs; owns the BPF maps.
