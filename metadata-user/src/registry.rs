//! In-memory view of the store shared by the servers and the datapath (owned by the control-plane work).
