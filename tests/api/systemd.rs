//! `contrib/systemd/portcullis.service` and `contrib/portcullis.toml` (SPEC.md, "Operations"):
//! `systemd-analyze verify` accepts the unit, `systemd-analyze security` rates it 2.0 or less,
//! it has the hardening SPEC names, and the example settings pass `config check` and agree
//! with the unit's directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::pg::REQUIRE_ALL;

const UNIT: &str = include_str!("../../contrib/systemd/portcullis.service");
const EXAMPLE: &str = include_str!("../../contrib/portcullis.toml");
/// Where the unit expects the binary; the tests point it at the one cargo built.
const INSTALLED: &str = "/usr/local/bin/portcullis";

/// `systemd-analyze`, or `None` after saying why the test is skipped (a failure instead
/// when every test must run).
fn systemd_analyze() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("systemd-analyze")).find(|p| p.is_file()));
    if found.is_none() {
        if std::env::var_os(REQUIRE_ALL).is_some() {
            panic!("systemd-analyze is missing (Debian package `systemd`) and {REQUIRE_ALL} is set");
        }
        eprintln!("skipped: systemd-analyze is missing (Debian package `systemd`)");
    }
    found
}

/// The unit, with the binary cargo built in place of the installed one, in `dir`.
fn unit_in(dir: &Path) -> PathBuf {
    let path = dir.join("portcullis.service");
    std::fs::write(&path, UNIT.replace(INSTALLED, env!("CARGO_BIN_EXE_portcullis"))).unwrap();
    path
}

/// The values the unit sets for `key`, in order.
fn directives<'a>(key: &str) -> Vec<&'a str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('='))).map(str::trim).collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(analyze).arg("verify").arg(unit_in(dir.path())).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
}

#[test]
fn systemd_analyze_security_rates_the_unit_at_2_or_less() {
    let Some(analyze) = systemd_analyze() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_in(dir.path()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(level) = text.lines().find_map(|l| l.split("Overall exposure level for portcullis.service: ").nth(1))
    else {
        // --offline appeared in systemd 250; an older one cannot rate a unit not installed.
        if std::env::var_os(REQUIRE_ALL).is_some() {
            panic!("systemd-analyze security --offline gave no rating: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        eprintln!("skipped: this systemd-analyze cannot rate an uninstalled unit");
        return;
    };
    let exposure: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    assert!(exposure <= 2.0, "exposure {exposure}:\n{text}");
}

#[test]
fn the_unit_has_the_hardening_spec_names() {
    assert_eq!(directives("DynamicUser"), ["yes"]);
    assert_eq!(directives("StateDirectory"), ["portcullis"]);
    assert_eq!(directives("LogsDirectory"), ["portcullis"]);
    assert_eq!(directives("ProtectSystem"), ["strict"]);
    assert_eq!(directives("NoNewPrivileges"), ["yes"]);
    assert_eq!(directives("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(directives("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
}

#[test]
fn the_example_settings_pass_config_check_and_match_the_units_directories() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/portcullis.toml"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let settings: toml::Table = EXAMPLE.parse().unwrap();
    let get = |key: &str| settings[key].as_str().unwrap().to_string();
    assert_eq!(get("data_dir"), format!("/var/lib/{}", directives("StateDirectory")[0]));
    assert_eq!(get("log_dir"), format!("/var/log/{}", directives("LogsDirectory")[0]));
    assert_eq!(get("cert_dir"), "/run/credentials/portcullis.service");
    let credentials = directives("LoadCredential");
    assert!(
        credentials.iter().any(|c| c.starts_with("cert.pem:")) && credentials.iter().any(|c| c.starts_with("key.pem:"))
    );
    for exec in directives("ExecStart").into_iter().chain(directives("ExecStartPre")) {
        assert!(exec.contains("--config /etc/portcullis/portcullis.toml"), "{exec}");
    }
}

/// The commented gating example at the end of `contrib/portcullis.toml`, uncommented as it
/// says (one "# " off each line), passes `config check`: a newcomer found no `[access]`
/// example there (review 130).
#[test]
fn the_example_settings_gating_block_passes_config_check_once_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let block = &EXAMPLE[EXAMPLE.find("# Gating other applications").expect("the gating example")..];
    let uncommented: String = block
        .lines()
        .skip_while(|l| !l.starts_with("# cookie_domain"))
        .map(|l| l.strip_prefix("# ").or_else(|| l.strip_prefix('#')).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.contains("[[access.rules]]"), "{uncommented}");
    let file = dir.path().join("gating.toml");
    std::fs::write(&file, format!("public_url = \"https://login.example.com\"\n{uncommented}")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["config", "check", "--config"])
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{uncommented}", String::from_utf8_lossy(&out.stderr));
}
