//! A minimal cpio "newc" writer: the format the kernel unpacks an initramfs
//! from. Forty lines here spare the machine a `cpio` package and the tests a
//! staging directory.

/// An archive being written; [`Cpio::finish`] adds the trailer.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, (0, 0), b"")
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | perm, (0, 0), data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node (the kernel opens /dev/console before /init
    /// runs, so it must exist in the archive itself).
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(path, S_IFCHR | 0o600, (major, minor), b"")
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> &mut Self {
        self.next_ino += 1;
        let name_size = path.len() + 1; // with its NUL
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for field in fields {
            self.buf
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(path.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_named() {
        let mut cpio = Cpio::new();
        cpio.dir("bin").file("init", 0o755, b"#!/bin/sh\n");
        let archive = cpio.finish();
        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        // The first header's name follows its 110 header bytes.
        assert_eq!(&archive[110..113], b"bin");
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("init\0"));
        assert!(text.contains("#!/bin/sh\n"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    /// An independent reader (busybox's cpio, which `cargo xtask setup`
    /// installs) lists what we write.
    #[test]
    fn busybox_cpio_reads_it() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};

        let mut cpio = Cpio::new();
        cpio.dir("dev")
            .char_dev("dev/console", 5, 1)
            .symlink("sh", "busybox")
            .file("init", 0o755, b"odd length");
        let archive = cpio.finish();
        let mut child = Command::new("busybox")
            .args(["cpio", "-t"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox (cargo xtask setup installs busybox-static)");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "dev\ndev/console\nsh\ninit\n"
        );
    }
}
