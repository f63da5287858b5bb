//! `berth.*` options on the kernel command line (`/proc/cmdline`).
//!
//! | option | meaning | default |
//! | --- | --- | --- |
//! | `berth.manifest=PATH` | the manifest PID 1 reads | [`DEFAULT_MANIFEST`] |
//! | `berth.log=LEVEL` | PID 1's own log level (`error…trace`), over the manifest's | manifest's `log.level` |
//! | `berth.on_fatal=poweroff\|reboot` | what to do on a fatal error, over the manifest's | manifest's `on_fatal` |
//! | `berth.images=PATH` | the embedded OCI image layout | [`DEFAULT_IMAGES`] |
//!
//! The kernel passes words it does not know to init as arguments or
//! environment; we read `/proc/cmdline` instead, which has all of them, with
//! the kernel's quoting (`"a b"` is one word, quotes removed).

use std::path::PathBuf;
use std::str::FromStr;

use crate::manifest::FatalAction;

/// Where the initramfs built by `berth-build` holds the manifest.
pub const DEFAULT_MANIFEST: &str = "/etc/berth/manifest.json";

/// Where the initramfs built by `berth-build` holds the OCI image layout.
pub const DEFAULT_IMAGES: &str = "/berth/images";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootOptions {
    pub manifest: Option<PathBuf>,
    pub log_level: Option<log::LevelFilter>,
    pub on_fatal: Option<FatalAction>,
    pub images: Option<PathBuf>,
    /// Options we could not use, for PID 1 to log once the logger is up
    /// (a typo on the command line must not stop the boot).
    pub warnings: Vec<String>,
}

/// Splits a command line the way the kernel does (`next_arg` in
/// lib/cmdline.c): whitespace separates words, double quotes group.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for ch in line.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Picks the `berth.*` options out of a kernel command line.
pub fn parse_cmdline(line: &str) -> BootOptions {
    let mut opts = BootOptions::default();
    for word in split_words(line) {
        let Some(rest) = word.strip_prefix("berth.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        match key {
            "manifest" if value.starts_with('/') => opts.manifest = Some(PathBuf::from(value)),
            "manifest" => opts.warnings.push(format!(
                "berth.manifest={value:?}: not an absolute path, ignored"
            )),
            "images" if value.starts_with('/') => opts.images = Some(PathBuf::from(value)),
            "images" => opts.warnings.push(format!(
                "berth.images={value:?}: not an absolute path, ignored"
            )),
            "log" => match log::LevelFilter::from_str(value) {
                Ok(level) => opts.log_level = Some(level),
                Err(_) => opts
                    .warnings
                    .push(format!("berth.log={value:?}: unknown level, ignored")),
            },
            "on_fatal" => match FatalAction::from_str(value) {
                Ok(action) => opts.on_fatal = Some(action),
                Err(e) => opts.warnings.push(format!("berth.on_fatal: {e}, ignored")),
            },
            other => opts
                .warnings
                .push(format!("unknown option berth.{other}, ignored")),
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_the_kernel() {
        assert_eq!(split_words("  a b\tc\n"), vec!["a", "b", "c"]);
        assert_eq!(split_words(r#"x="a b" y"#), vec!["x=a b", "y"]);
        assert_eq!(
            split_words(r#""berth.manifest=/m m.json""#),
            vec!["berth.manifest=/m m.json"]
        );
        assert_eq!(split_words(r#"a="""#), vec!["a="]);
        assert_eq!(split_words(""), Vec::<String>::new());
    }

    #[test]
    fn options() {
        let o = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 panic=-1 berth.manifest=/etc/m.json berth.log=debug berth.on_fatal=reboot berth.images=/img quiet",
        );
        assert_eq!(o.manifest, Some(PathBuf::from("/etc/m.json")));
        assert_eq!(o.images, Some(PathBuf::from("/img")));
        assert_eq!(o.log_level, Some(log::LevelFilter::Debug));
        assert_eq!(o.on_fatal, Some(FatalAction::Reboot));
        assert!(o.warnings.is_empty());

        assert_eq!(parse_cmdline("console=ttyS0"), BootOptions::default());

        let o = parse_cmdline(
            "berth.log=loud berth.on_fatal=halt berth.manifest=rel berth.colour=1 berth.log=warn",
        );
        assert_eq!(
            o.log_level,
            Some(log::LevelFilter::Warn),
            "the last valid one wins"
        );
        assert_eq!(o.on_fatal, None);
        assert_eq!(o.manifest, None);
        assert_eq!(
            o.warnings,
            vec![
                "berth.log=\"loud\": unknown level, ignored",
                "berth.on_fatal: unknown action \"halt\" (expected poweroff or reboot), ignored",
                "berth.manifest=\"rel\": not an absolute path, ignored",
                "unknown option berth.colour, ignored",
            ]
        );
    }
}
