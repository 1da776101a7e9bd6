//! Saving generated images: the glue between the pipeline, the scheduler table (A1111
//! sampler names), the output module (PNG chunks, naming, licence notice) and the batch
//! engine, none of which know each other.

use crate::output::{self, naming, NameFields, OnExisting, SaveOptions, Template};
use crate::pipeline::Generated;
use crate::{schedulers, Result};
use std::path::{Path, PathBuf};

/// The A1111 sampler name and "Schedule type" for a record's scheduler.
pub fn sampler_names(scheduler: &str) -> Result<(&'static str, Option<&'static str>)> {
    let (info, schedule) = schedulers::resolve(scheduler)?;
    // Always named: A1111 reads a missing "Schedule type" as "Automatic" (Karras for DPM++ 2M).
    Ok((info.a1111_name, Some(info.schedule_label(schedule))))
}

/// Writes image `index` of a run into `out_dir`, named by `template` (default: the
/// never-colliding one). An existing file is an error unless `overwrite`.
pub fn save(
    g: &Generated,
    out_dir: &Path,
    template: Option<&str>,
    index: usize,
    timestamp: &str,
    overwrite: bool,
) -> Result<PathBuf> {
    let template = match template {
        Some(t) => Template::parse(t)?,
        None => Template::default(),
    };
    let fields = NameFields { index, seed: g.record.request.seed, prompt: &g.record.request.prompt, timestamp };
    let path = template.resolve(out_dir, &fields)?;
    let on_existing = if overwrite {
        OnExisting::Overwrite
    } else if template.is_default() {
        OnExisting::AddSuffix
    } else {
        OnExisting::Fail
    };
    let (sampler, schedule) = sampler_names(&g.record.request.scheduler)?;
    output::save_png(
        &path,
        &g.image,
        &g.record,
        &SaveOptions { sampler_a1111: sampler, schedule_type: schedule, on_existing },
    )
}

/// The finished PNG file's bytes, with all metadata chunks (for the batch engine).
pub fn png_bytes(g: &Generated) -> Result<Vec<u8>> {
    let (sampler, schedule) = sampler_names(&g.record.request.scheduler)?;
    let chunks = output::text_chunks(&g.record, sampler, schedule)?;
    let text = chunks.each_ref().map(|(k, v)| (*k, v.as_str()));
    output::encode_png(&g.image, &text)
}

/// Removes the temporary files that a killed earlier run left in the folders of the files this
/// run `written` (only sdgen's own, and only those unchanged since this run `started`; see
/// [`output::atomic::remove_stale_temps`]). Best effort: tidying up never fails a run that
/// wrote its images. Returns how many were removed.
pub fn remove_stale_temps(written: &[PathBuf], started: std::time::SystemTime) -> usize {
    let mut folders: Vec<&Path> =
        written.iter().map(|p| p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))).collect();
    folders.sort();
    folders.dedup();
    folders.into_iter().map(|dir| output::remove_stale_temps(dir, output::Stale::OlderThan(started)).unwrap_or(0)).sum()
}

/// A timestamp shared by the images of one run.
pub fn run_timestamp() -> String {
    naming::timestamp_now()
}

/// The batch engine's [`Backend`](crate::batch::Backend) on a loaded
/// [`Pipeline`](crate::Pipeline): a group of jobs becomes one UNet batch; if the batch fails
/// as a whole, its jobs are retried one at a time so one bad job (say, out of memory) does not
/// fail the others.
pub struct PipelineBackend<'a> {
    pub pipeline: &'a mut crate::pipeline::Pipeline,
}

impl crate::batch::Backend for PipelineBackend<'_> {
    fn license(&self) -> Option<crate::request::LicenseRecord> {
        Some(self.pipeline.model().license.clone())
    }

    fn render(
        &mut self,
        jobs: &[crate::batch::Job],
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Vec<std::result::Result<Vec<u8>, String>> {
        let requests: Vec<crate::Request> = jobs.iter().map(|j| j.request.clone()).collect();
        let mut step = |p: crate::pipeline::Progress| on_step(p.sampling_step, p.sampling_steps);
        // Jobs of one group share their LoRAs (`group_jobs`).
        if let Some(first) = requests.first() {
            if let Err(e) = self.pipeline.apply_loras(first) {
                return requests.iter().map(|_| Err(e.to_string())).collect();
            }
        }
        match self.pipeline.generate_many(&requests, &mut step) {
            Ok(images) => images.iter().map(|g| png_bytes(g).map_err(|e| e.to_string())).collect(),
            Err(e) if jobs.len() == 1 => vec![Err(e.to_string())],
            Err(_) => requests
                .iter()
                .map(|r| {
                    let g =
                        self.pipeline.generate_many(std::slice::from_ref(r), &mut step).map_err(|e| e.to_string())?;
                    let g = g.first().ok_or_else(|| "no image was produced".to_string())?;
                    png_bytes(g).map_err(|e| e.to_string())
                })
                .collect(),
        }
    }
}
