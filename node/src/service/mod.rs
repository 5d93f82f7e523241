//! The node as a system service: installing and removing its systemd unit (`install.rs`, the
//! files in `dist/`), and telling systemd when it is ready and when it stops (`sd_notify.rs`).

pub mod install;
pub mod sd_notify;

pub use install::{InstallOptions, ServiceError, UninstallOptions, install, uninstall};
