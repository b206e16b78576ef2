//! Deployment PKI: see `ferry certs`.
