//! `sdgen info`.

use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let info = sdgen::info::Info::gather();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", info.render());
    }
    Ok(())
}
