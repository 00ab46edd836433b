//! The captured answers, one per peer address, and the file they come in
//! (written by the benchmark, read by the responder).
use std::collections::HashMap;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::Path;

/// Response bytes by peer address.
#[derive(Debug, Default)]
pub struct Answers(HashMap<Ipv4Addr, Vec<u8>>);

impl Answers {
    pub fn get(&self, peer: Ipv4Addr) -> Option<&[u8]> {
        self.0.get(&peer).map(Vec::as_slice)
    }

    pub fn load(path: &Path) -> io::Result<Self> {
        Self::parse(&std::fs::read(path)?)
    }

    /// Records of address (4 bytes), length (u32, little-endian), bytes.
    pub fn parse(mut bytes: &[u8]) -> io::Result<Self> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        let mut answers = HashMap::new();
        while !bytes.is_empty() {
            let (head, rest) = bytes
                .split_at_checked(8)
                .ok_or_else(|| invalid("truncated record header"))?;
            let addr = Ipv4Addr::new(head[0], head[1], head[2], head[3]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let (answer, rest) = rest
                .split_at_checked(len)
                .ok_or_else(|| invalid("truncated answer"))?;
            answers.insert(addr, answer.to_vec());
            bytes = rest;
        }
        Ok(Self(answers))
    }
}

/// Writes `answers` in the format [`Answers::parse`] reads.
#[allow(dead_code)] // The benchmark's side; the responder only reads.
pub fn write(path: &Path, answers: &[(Ipv4Addr, Vec<u8>)]) -> io::Result<()> {
    let mut file = io::BufWriter::new(std::fs::File::create(path)?);
    for (addr, bytes) in answers {
        file.write_all(&addr.octets())?;
        file.write_all(&(bytes.len() as u32).to_le_bytes())?;
        file.write_all(bytes)?;
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_through_the_file() {
        let dir = std::env::temp_dir().join(format!("mdr-answers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("answers.bin");
        let a = Ipv4Addr::new(240, 1, 0, 1);
        let b = Ipv4Addr::new(240, 1, 0, 2);
        write(
            &path,
            &[(a, b"HTTP/1.1 200 OK\r\n\r\nA".to_vec()), (b, Vec::new())],
        )
        .unwrap();
        let answers = Answers::load(&path).unwrap();
        assert_eq!(answers.get(a), Some(&b"HTTP/1.1 200 OK\r\n\r\nA"[..]));
        assert_eq!(answers.get(b), Some(&b""[..]));
        assert_eq!(answers.get(Ipv4Addr::new(240, 1, 0, 3)), None);
        assert!(Answers::parse(&[240, 1, 0, 1, 5, 0, 0, 0, b'x']).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
