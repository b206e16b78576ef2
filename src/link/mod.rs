//! The link: forwards the archive to the central site.
