//! `metadata-redirector identity jwks`: the JWK Set for verifiers, from the
//! same key settings `serve` reads (so the `kid` matches the tokens').
use std::process::ExitCode;

use anyhow::bail;

use super::{IdentityCommand, settings::resolve_identity};
use crate::backend::identity::jwks::jwks;

pub fn run(command: IdentityCommand) -> anyhow::Result<ExitCode> {
    match command {
        IdentityCommand::Jwks(args) => {
            let Some(identity) = resolve_identity(&args.identity, args.config.as_deref())? else {
                bail!(
                    "no identity key: give --identity-key and --identity-cert (or --config with identity_key and identity_cert)"
                );
            };
            println!("{}", serde_json::to_string_pretty(&jwks(&identity.key)?)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
