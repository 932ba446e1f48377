//! `meshgate init` and `meshgate token generate`.

use std::path::Path;

use anyhow::{bail, Context};

use crate::config::SAMPLE;
use crate::secrets::generate_token_file;

/// Writes the sample configuration and fresh token files into `dir`; `data_dir` (the log and build
/// logs, such as `/var/lib/meshgate`) replaces the sample's `meshgate-data` beside the file.
pub fn init(dir: &Path, data_dir: Option<&Path>) -> anyhow::Result<()> {
    let config = dir.join("meshgate.toml");
    if config.exists() {
        bail!("{} exists; not overwriting it", config.display());
    }
    let sample = match data_dir {
        Some(data) => {
            let line = format!("data_dir = {}", toml::Value::String(data.to_string_lossy().into_owned()));
            SAMPLE.replacen("data_dir = \"meshgate-data\"", &line, 1)
        }
        None => SAMPLE.to_owned(),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&config, sample).with_context(|| format!("cannot write {}", config.display()))?;
    println!("wrote {}", config.display());
    // The tokens' folder is the owner's alone (0700), like the data dir's.
    crate::secrets::private_dir(&dir.join("secrets"))?;
    for name in ["webhook.token", "admin.token", "nodes.token"] {
        let path = dir.join("secrets").join(name);
        if path.exists() {
            println!("kept {}", path.display());
        } else {
            generate_token_file(&path, 0o400)?;
            println!("wrote {}", path.display());
        }
    }
    println!("start with: meshgate serve --config {}", config.display());
    Ok(())
}

pub fn generate(file: &Path, force: bool) -> anyhow::Result<()> {
    if file.exists() && !force {
        bail!("{} exists; pass --force to replace it", file.display());
    }
    generate_token_file(file, 0o400)?;
    println!("wrote {}", file.display());
    // Root's file (mode 0400) is unreadable by the gateway's own user: say what to do.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(file).is_ok_and(|m| m.uid() == 0) {
        eprintln!(
            "note: {} belongs to root; give it to the user the gateway runs as (`chown meshgate: {}`), or \
             generate it as that user (`runuser -u meshgate -- meshgate token generate …`)",
            file.display(),
            file.display()
        );
    }
    Ok(())
}
