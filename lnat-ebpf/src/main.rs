#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    btf_maps::PerCpuArray,
    macros::{btf_map, classifier},
    programs::TcContext,
};

#[repr(C)]
pub struct Counters {
    pub seen: u64,
    pub other: u64,
}

#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

#[classifier]
pub fn lnat(_ctx: TcContext) -> i32 {
    if let Some(c) = COUNTERS.get_ptr_mut(0) {
        unsafe { (*c).seen += 1 };
    }
    TC_ACT_UNSPEC
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
