use anyhow::Context as _;
fn main() -> anyhow::Result<()> {
    let data = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lnat"));
    let mut ebpf = aya::Ebpf::load(data).context("load")?;
    let prog: &mut aya::programs::SchedClassifier =
        ebpf.program_mut("lnat").context("prog")?.try_into()?;
    prog.load()?;
    let iface = std::env::args().nth(1).unwrap_or("lo".into());
    prog.attach(&iface, aya::programs::TcAttachType::Ingress)?;
    for (name, map) in ebpf.maps() {
        println!("map {name} {map:?}");
    }
    let m = ebpf.map("COUNTERS").unwrap();
    m.pin("/sys/fs/bpf/lnat_probe_counters").ok();
    std::thread::sleep(std::time::Duration::from_secs(3));
    Ok(())
}
