//! Link-time settings for libtorch: an rpath so the binary finds libtorch without
//! `LD_LIBRARY_PATH`, and a forced link of `libtorch_cuda.so` when it can be loaded.
//!
//! The rpath lists `$ORIGIN/../lib` and `$ORIGIN/lib` before the build's own libtorch folder:
//! a binary copied with its libraries (`tools/install.sh PREFIX` puts them in `PREFIX/lib`)
//! uses those wherever the prefix is moved, and the binary in `target/` the build's.
//!
//! rustc links with `--as-needed`; nothing in sdgen calls into `libtorch_cuda.so` directly,
//! so the linker would drop it and CUDA would be silently unavailable at run time.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sdgen_cuda_linked)");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SDGEN_CUDA");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch lib folder; no rpath added");
        return;
    };
    let lib = Path::new(&lib);
    // `$ORIGIN` reaches the linker as written (no shell in between); the dynamic loader
    // replaces it with the binary's folder.
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/../lib:$ORIGIN/lib:{}", lib.display());

    let cuda = lib.join("libtorch_cuda.so");
    println!("cargo:rerun-if-changed={}", cuda.display());
    if !cuda.exists() {
        return;
    }
    // The minimal CPU install keeps libtorch_cuda.so but not the CUDA libraries it needs.
    // Linking it then would make the binary fail to start, so link it only if it loads.
    // SAFETY: loading a shared library runs its initialisers; libtorch_cuda's only
    // register CUDA kernels and are run by every program that links it.
    let loadable = unsafe { libloading::os::unix::Library::open(Some(&cuda), libloading::os::unix::RTLD_LAZY) };
    match loadable {
        Ok(_) => {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
            println!("cargo:rustc-cfg=sdgen_cuda_linked");
        }
        // A CPU-only setup is normal; say why CUDA is off only to someone who asked for it.
        Err(e) if std::env::var("SDGEN_CUDA").as_deref() == Ok("1") => println!(
            "cargo:warning=libtorch_cuda.so is present but cannot be loaded ({e}); building for CPU only. \
             For GPU support run `SDGEN_CUDA=1 tools/setup.sh` or point LIBTORCH at a CUDA libtorch 2.11."
        ),
        Err(_) => {}
    }
}
