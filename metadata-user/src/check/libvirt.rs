//! libvirt's client library, for `--discover libvirt` only: the daemon
//! loads it at run time (no other command needs libvirt installed), so a
//! host without it fails here and at `serve`'s start, never later.
use crate::discovery::libvirt::ffi;

use super::Item;

const NAME: &str = "libvirt";

/// The item: the library loads and has every function discovery calls.
pub fn item() -> Item {
    outcome(ffi::load())
}

fn outcome(loaded: Result<(), String>) -> Item {
    match loaded {
        Ok(()) => Item::ok(NAME, format!("{} loads (--discover libvirt)", ffi::LIBRARY)),
        Err(err) => Item::fail(
            NAME,
            format!("--discover libvirt: {err}"),
            format!("apt-get install {}", ffi::PACKAGE),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_names_the_flag_and_the_package() {
        let line = outcome(Err("cannot load libvirt.so.0: gone".into())).line();
        assert_eq!(
            line,
            "FAIL  libvirt: --discover libvirt: cannot load libvirt.so.0: gone; \
             fix: apt-get install libvirt0"
        );
    }
}
