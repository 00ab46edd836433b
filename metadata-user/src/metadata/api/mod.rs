//! The guest-facing API (owned by the API work): nova-compatible OpenStack and
//! EC2 trees, IMDSv2 tokens.
