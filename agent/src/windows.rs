//! What the Windows probe runs on a Hyper-V host ([`scripts`]) and pure
//! parsers for what those commands print ([`parse`]). No I/O here:
//! [`crate::probe::windows`] runs the commands.
//!
//! Output shapes follow `shared/WINDOWS-FACTS.md`; the recorded samples are in
//! `agent/fixtures/windows/` with their provenance.
//!
//! One PowerShell invocation per question (Get-VMHost, Get-VMMigrationNetwork,
//! services, OS/Device Guard, events). Combining Get-VMHost and the migration
//! networks into one script would save one PowerShell start (~0.5 s) but would
//! nest an array inside an object, a shape PS 5.1's `ConvertTo-Json` is known
//! to mangle and that WINDOWS-FACTS does not describe; separate commands keep
//! every output in a documented shape, and one failing step does not hide the
//! others.

pub mod parse;
pub mod scripts;

// The flat paths (`crate::windows::parse_klist`, `crate::windows::PS_VMHOST`)
// predate the split and stay valid.
pub use parse::*;
pub use scripts::*;
