use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "lnat-ebpf")
        .ok_or_else(|| anyhow!("lnat-ebpf not found"))?;
    let root = pkg.manifest_path.parent().context("no parent")?;
    aya_build::build_ebpf(
        [Package {
            name: "lnat-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
