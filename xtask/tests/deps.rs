//! What the dependency trees may not contain: xtask must build on a fresh machine before
//! `cargo xtask setup` has installed the nightly's rust-src and bpf-linker, and the shipped
//! `lnat` must not carry the test kit.

use std::{collections::BTreeSet, path::Path, process::Command};

/// The names of the packages in `package`'s tree, following `edges` (`cargo tree -e`).
fn tree(package: &str, edges: &str) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["tree", "-p", package, "-e", edges, "--prefix", "none"])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(names.contains(package), "{package} is not in its own tree");
    names
}

/// Asserts that none of `banned` is in `names`.
fn lacks(names: &BTreeSet<String>, banned: &[&str], why: &str) {
    let found: Vec<&&str> = banned.iter().filter(|b| names.contains(**b)).collect();
    assert!(found.is_empty(), "{why}, but the tree has {found:?}");
}

#[test]
fn xtask_builds_without_the_bpf_toolchain() {
    lacks(
        &tree("xtask", "normal,build"),
        &[
            "aya",
            "aya-build",
            "aya-ebpf",
            "lnat-ebpf",
            "lnat-user",
            "lnat-tests",
        ],
        "xtask must compile before setup installs rust-src and bpf-linker",
    );
}

#[test]
fn lnat_is_built_without_the_test_kit() {
    let names = tree("lnat-user", "normal,build");
    assert!(
        names.contains("lnat-common"),
        "lnat-user without lnat-common"
    );
    lacks(
        &names,
        &["lnat-testkit", "lnat-tests", "proptest"],
        "the shipped lnat must not contain test code",
    );
}
