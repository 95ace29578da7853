//! `ember check-config` on real files: a good config reports OK, lists what each TLS
//! certificate serves and when it expires; a bad one exits 2 naming the key at fault.

use std::path::Path;
use std::process::{Command, Output};

use ember_tests::process::ember_bin;

fn check(config: &Path) -> Output {
    Command::new(ember_bin())
        .args(["check-config", "--config"])
        .arg(config)
        .output()
        .expect("run ember check-config")
}

fn cert(dir: &Path, name: &str, sans: &[&str]) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(sans).expect("certificate");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn good_config_lists_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (dc, dk) = cert(dir.path(), "default", &["example.test"]);
    let (mc, mk) = cert(
        dir.path(),
        "media",
        &["media.example.test", "*.img.example.test"],
    );
    let config = dir.path().join("ember.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = {dc:?}\nkey = {dk:?}\n\
             [[tls.certificates]]\ncert = {mc:?}\nkey = {mk:?}\n\
             [turn]\nauth_secrets = [\"a-long-enough-secret-0123456789\"]\n\
             [storage]\ncredentials = {{ AKCHECKCONFIG0001 = \"check-config-secret-0123\" }}\n\
             public_url = \"https://s3.example.test\"\n"
        ),
    )
    .unwrap();
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("tls: {dc}: example.test; expires ")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "tls: {mc}: media.example.test, *.img.example.test; expires "
        )),
        "{stdout}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ember.toml");
    for (toml, key) in [
        (
            "[storage]\npublic_url = \"s3.example.test/path\"\n",
            "storage.public_url",
        ),
        (
            "[storage]\ndownload_scheme = \"ftp\"\n",
            "storage.download_scheme",
        ),
        (
            "[[tls.certificates]]\ncert = \"/nonexistent.pem\"\n",
            "tls.certificates[0].key",
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = check(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
    // A certificate file that cannot be read: exit 2, the file named.
    std::fs::write(
        &config,
        "[[tls.certificates]]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
    )
    .unwrap();
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/c.pem"), "{stderr}");
}
