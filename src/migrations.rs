//! TEMPORARY interface stub (the real loader lands from branch `plan`).
#![allow(dead_code)]
use std::path::{Path, PathBuf};
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub file_name: String,
    pub sql: String,
    pub sha256: String,
    pub checksum: u64,
    pub no_transaction: bool,
}
impl Migration {
    pub fn to_refinery(&self) -> refinery::Migration {
        refinery::Migration::unapplied(&format!("V{}__{}", self.version, self.name), &self.sql)
            .expect("stub")
    }
}
pub struct MigrationSet {
    pub dir: PathBuf,
    pub migrations: Vec<Migration>,
}
#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct MigrationError;
pub fn load(_dir: &Path) -> Result<MigrationSet, MigrationError> {
    Err(MigrationError)
}
