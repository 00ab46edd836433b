//! A temporary directory removed on Drop.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::names;

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(role: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(names::global(role));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
