//! Placeholder: parsers for Windows output shapes.
