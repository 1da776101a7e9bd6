//! `sdgen schedulers`: every scheduler with its names and a one-line description.

pub fn run() -> anyhow::Result<()> {
    println!("{:<18} {:<36} {:<22} description", "A1111 name", "diffusers class", "schedules");
    for s in sdgen::schedulers::all() {
        let schedules: Vec<&str> = s.schedules.iter().map(|x| x.short_name()).collect();
        println!("{:<18} {:<36} {:<22} {}", s.a1111_name, s.diffusers_name, schedules.join(","), s.description);
    }
    println!("\nNames are case-insensitive; A1111 names may carry the schedule (\"DPM++ 2M Karras\").");
    Ok(())
}
