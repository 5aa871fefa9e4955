//! Placeholder: the Windows probe.
