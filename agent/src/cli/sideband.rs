//! `portcullis sideband …` and `portcullis rest password`: the credentials gateways and
//! automation present (see `service::credentials`).

use super::*;
use crate::control::answer::SidebandCredentials;
use crate::control::proto::CredentialAction;

/// `portcullis sideband …`.
#[derive(Debug, Subcommand)]
pub enum SidebandVerb {
    /// Create a sideband token (ASE's `create_sideband_token`); it is shown this once.
    CreateToken(JsonFlag),
    /// The tokens, by their first characters and fingerprints (ASE's `list_sideband_token`).
    ListTokens(JsonFlag),
    /// Add a token made elsewhere, e.g. by ASE (32 lowercase letters and digits).
    ImportToken {
        /// The token.
        token: String,
    },
    /// Delete a token (ASE's `delete_sideband_token`).
    DeleteToken {
        /// The token.
        token: String,
    },
    /// Whether gateways must present a valid `ASE-Token`: on or off (ASE's
    /// `enable_sideband_authentication`); kept across restarts.
    Authentication {
        /// on or off.
        state: String,
    },
}

/// `portcullis rest …`.
#[derive(Debug, Subcommand)]
pub enum RestVerb {
    /// Set the REST API's secret key (`x-ase-secret-key`; ASE's `update_password`), read
    /// from the first line of standard input. Until one is set, the REST API refuses all.
    Password,
}

pub(super) fn sideband(cli: &Cli, verb: &SidebandVerb) -> anyhow::Result<()> {
    let (action, json) = match verb {
        SidebandVerb::CreateToken(j) => (CredentialAction::CreateToken, j.json),
        SidebandVerb::ListTokens(j) => (CredentialAction::Show, j.json),
        SidebandVerb::ImportToken { token } => (
            CredentialAction::ImportToken {
                token: token.clone(),
            },
            false,
        ),
        SidebandVerb::DeleteToken { token } => (
            CredentialAction::DeleteToken {
                token: token.clone(),
            },
            false,
        ),
        SidebandVerb::Authentication { state } => {
            let on = match state.as_str() {
                "on" => true,
                "off" => false,
                other => bail!("{:?}: expected on or off", printable(other)),
            };
            (CredentialAction::Authentication { on }, false)
        }
    };
    let r = call(cli, &Request::Credentials { action })?;
    if json {
        return print_json(&r);
    }
    let c: SidebandCredentials = decode(r)?;
    match verb {
        SidebandVerb::CreateToken(_) => {
            println!(
                "Sideband token {} created.",
                c.created.as_deref().unwrap_or("?")
            );
        }
        SidebandVerb::ListTokens(_) => {
            println!(
                "sideband authentication: {}",
                if c.authentication { "on" } else { "off" }
            );
            if c.tokens.is_empty() {
                println!("no sideband tokens");
            }
            for t in &c.tokens {
                println!(
                    "{}…  sha256:{}  created {}",
                    printable(&t.hint),
                    t.fingerprint,
                    when(Some(t.created))
                );
            }
        }
        SidebandVerb::ImportToken { .. } => println!("Sideband token imported."),
        SidebandVerb::DeleteToken { .. } => {
            if c.deleted != Some(true) {
                bail!("no such sideband token");
            }
            println!("Sideband token deleted.");
        }
        SidebandVerb::Authentication { .. } => println!(
            "sideband authentication: {}",
            if c.authentication { "on" } else { "off" }
        ),
    }
    Ok(())
}

pub(super) fn rest(cli: &Cli, verb: &RestVerb) -> anyhow::Result<()> {
    match verb {
        RestVerb::Password => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the secret key from standard input")?;
            let secret = line.trim_end_matches(['\n', '\r']).to_owned();
            call(
                cli,
                &Request::Credentials {
                    action: CredentialAction::RestSecret { secret },
                },
            )?;
            println!("REST secret key set.");
            Ok(())
        }
    }
}
