//! Link-time settings for libtorch: an rpath so the binary finds libtorch without
//! `LD_LIBRARY_PATH`, and a forced link of `libtorch_cuda.so` when it can be loaded.
//!
//! The rpath lists `$ORIGIN/../lib` and `$ORIGIN/lib` before the build's own libtorch folder:
//! a binary copied with its libraries (`tools/install.sh PREFIX` puts them in `PREFIX/lib`)
//! uses those wherever the prefix is moved, and the binary in `target/` the build's.
//!
//! rustc links with `--as-needed`; nothing in sdgen calls into `libtorch_cuda.so` directly,
//! so the linker would drop it and CUDA would be silently unavailable at run time.
//!
//! It also builds sdgen's CUDA shim (`src/cuda/graphs.cpp`: CUDA graphs, cuBLAS switches)
//! as a shared library in `OUT_DIR`, which `src/cuda/shim.rs` embeds and `dlopen`s only when
//! a model runs on CUDA; the binary itself never references a CUDA symbol. It compiles
//! against the same libtorch headers as torch-sys plus the CUDA runtime headers of the pip
//! wheels (`nvidia/cu13/include`, with `crt/` from `nvidia-cuda-crt`). If it cannot be built
//! the build goes on without it and `sdgen info` says why.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(sdgen_cuda_linked)");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-env-changed=SDGEN_CUDA");
    // MKL inside libtorch asks this function which CPU it runs on (src/mkl.rs): export
    // sdgen's definition from every binary, test and example so that the dynamic linker
    // gives MKL this one, and keep it even where nothing in the program calls it.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,-u,mkl_serv_intel_cpu_true,--export-dynamic-symbol=mkl_serv_intel_cpu_true");
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its libtorch lib folder; no rpath added");
        return;
    };
    let lib = Path::new(&lib);
    build_shim(lib);
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

/// Compiles `src/cuda/graphs.cpp` into `OUT_DIR/libsdgen_cuda.so` and sets `sdgen_cuda_shim`,
/// or sets `SDGEN_CUDA_SHIM_MISSING` to the reason it could not.
fn build_shim(lib: &Path) {
    println!("cargo::rustc-check-cfg=cfg(sdgen_cuda_shim)");
    println!("cargo:rerun-if-changed=src/cuda/graphs.cpp");
    println!("cargo:rerun-if-env-changed=SDGEN_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=SDGEN_NO_CUDA_SHIM");
    match try_build_shim(lib) {
        Ok(()) => println!("cargo:rustc-cfg=sdgen_cuda_shim"),
        Err(why) => {
            if std::env::var("SDGEN_CUDA").as_deref() == Ok("1") {
                println!("cargo:warning=the CUDA shim (CUDA graphs) was not built: {why}");
            }
            println!("cargo:rustc-env=SDGEN_CUDA_SHIM_MISSING={}", why.replace('\n', " "));
        }
    }
}

fn try_build_shim(lib: &Path) -> Result<(), String> {
    if std::env::var_os("SDGEN_NO_CUDA_SHIM").is_some() {
        return Err("SDGEN_NO_CUDA_SHIM was set at build time".into());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?).join("libsdgen_cuda.so");
    let root = lib.parent().ok_or("the libtorch lib folder has no parent")?;
    let include = root.join("include");
    if !include.join("ATen/cuda/CUDAGraph.h").exists() {
        return Err(format!("libtorch at {} has no CUDA headers (ATen/cuda/CUDAGraph.h)", root.display()));
    }
    // pip's torch: site/torch/lib → site/nvidia/cu13/{include,lib}.
    let nvidia = root.parent().map(|site| site.join("nvidia/cu13"));
    let mut cuda_includes: Vec<PathBuf> =
        std::env::var_os("SDGEN_CUDA_INCLUDE").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    cuda_includes.extend(nvidia.iter().map(|n| n.join("include")));
    // Where `tools/setup.sh` puts the crt headers when LIBTORCH points elsewhere.
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    cuda_includes.push(manifest.join(".venv/cuda-include"));
    cuda_includes.push(PathBuf::from("/usr/local/cuda/include"));
    // Headers installed later (setup.sh) rebuild the shim; only existing paths are watched,
    // since a missing one would rerun this script on every build.
    for d in cuda_includes.iter().chain([&manifest.join(".venv")]).filter(|d| d.exists()) {
        println!("cargo:rerun-if-changed={}", d.display());
    }
    let found = |header: &str| cuda_includes.iter().any(|d| d.join(header).exists());
    if !found("cuda_runtime_api.h") || !found("crt/host_config.h") {
        return Err(format!(
            "the CUDA runtime headers (cuda_runtime_api.h and crt/host_config.h) are not in {}; \
             `tools/setup.sh` installs them (nvidia-cuda-runtime, nvidia-cuda-crt), or set SDGEN_CUDA_INCLUDE",
            cuda_includes.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").pic(true).opt_level(2).warnings(false);
    let mut cmd = build.try_get_compiler().map_err(|e| format!("no C++ compiler: {e}"))?.to_command();
    cmd.arg(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .arg("-shared")
        .arg("-I")
        .arg(&include)
        .arg("-I")
        .arg(include.join("torch/csrc/api/include"));
    for d in &cuda_includes {
        cmd.arg("-I").arg(d);
    }
    cmd.arg("src/cuda/graphs.cpp").arg("-o").arg(&out).arg(format!("-L{}", lib.display()));
    // The CUDA runtime ships as libcudart.so.13 only (no unversioned link name).
    if let Some(cudart) = nvidia.map(|n| n.join("lib")).filter(|l| l.join("libcudart.so.13").exists()) {
        cmd.arg(format!("-L{}", cudart.display())).arg("-l:libcudart.so.13");
        cmd.arg(format!("-Wl,-rpath,{}", cudart.display()));
    } else {
        cmd.arg("-lcudart");
    }
    cmd.args(["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-ltorch_cpu", "-lc10"])
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    let output = cmd.output().map_err(|e| format!("cannot run the C++ compiler: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(format!(
            "compiling src/cuda/graphs.cpp failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(())
}
