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

/// Where [`save`] will write image `index` of a run made from `req` (before a suffix that
/// avoids a name already taken).
pub fn image_path(
    req: &crate::Request,
    out_dir: &Path,
    template: Option<&str>,
    index: usize,
    timestamp: &str,
) -> Result<PathBuf> {
    let template = match template {
        Some(t) => Template::parse(t)?,
        None => Template::default(),
    };
    template.resolve(out_dir, &NameFields { index, seed: req.seed, prompt: &req.prompt, timestamp })
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

/// Preview files of the images being made (`--preview N`): every `every` sampling steps,
/// each batch row's preview ([`Pipeline::preview`](crate::Pipeline::preview)) replaces
/// `NAME.preview.png` beside the image it shows (see [`output::preview_path`]); the files go
/// when this value is dropped (the images are written, or the run failed or was cancelled) or
/// the process gets a signal (see [`output::TransientFile`]). A preview that cannot be made or
/// written is a warning, once, never an error.
#[derive(Debug)]
pub struct PreviewFiles {
    every: usize,
    files: Vec<output::TransientFile>,
    last_step: usize,
    warned: bool,
}

impl PreviewFiles {
    /// Previews every `every` sampling steps (at least 1) for the images that will be written
    /// at `images`, one per batch row, in order.
    pub fn new(every: usize, images: &[PathBuf]) -> PreviewFiles {
        let files = images.iter().map(|p| output::TransientFile::new(output::preview_path(p))).collect();
        PreviewFiles { every: every.max(1), files, last_step: 0, warned: false }
    }

    /// The preview files, whether written yet or not.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path()).collect()
    }

    /// For the step callback: writes the previews when this step is one of every `every`
    /// sampling steps. The last step is skipped: the image itself follows at once.
    pub fn on_step(&mut self, pipe: &crate::Pipeline, p: &crate::pipeline::Progress) {
        if !self.due(p.sampling_step, p.sampling_steps) {
            return;
        }
        if let Err(e) = self.write(pipe, p.latents) {
            if !std::mem::replace(&mut self.warned, true) {
                log::warn!("no preview: {e}");
            }
        }
    }

    /// Whether sampling step `step` of `steps` gets a preview, noting it as done. Heun-like
    /// samplers report each sampling step twice: once is enough.
    fn due(&mut self, step: usize, steps: usize) -> bool {
        if step == self.last_step || step % self.every != 0 || step >= steps {
            return false;
        }
        self.last_step = step;
        true
    }

    fn write(&mut self, pipe: &crate::Pipeline, latents: &tch::Tensor) -> Result<()> {
        let images = pipe.preview(latents)?;
        for (file, image) in self.files.iter_mut().zip(&images) {
            if let Some(dir) = file.path().parent().filter(|d| !d.as_os_str().is_empty()) {
                output::create_folder(dir)?;
            }
            file.write(&output::encode_png(image, &[])?)?;
        }
        Ok(())
    }
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
    /// Preview files while the images form (`sdgen batch --preview N`); `None`: none.
    pub previews: Option<BatchPreviews>,
}

/// Where and how often [`PipelineBackend`] writes previews: every `every` sampling steps,
/// beside each job's image in `out_dir` (see [`PreviewFiles`]).
#[derive(Debug, Clone)]
pub struct BatchPreviews {
    pub every: usize,
    pub out_dir: PathBuf,
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
        // Jobs of one group share their LoRAs (`group_jobs`).
        if let Some(first) = requests.first() {
            if let Err(e) = self.pipeline.apply_loras(first) {
                return requests.iter().map(|_| Err(e.to_string())).collect();
            }
        }
        let pipeline: &crate::Pipeline = self.pipeline;
        let previews = self.previews.as_ref();
        // The group as one UNet batch; its previews are removed when this returns.
        let run = |jobs: &[&crate::batch::Job], on_step: &mut dyn FnMut(usize, usize)| {
            let mut files = previews.map(|p| {
                let images: Vec<PathBuf> = jobs.iter().map(|j| p.out_dir.join(&j.file_name)).collect();
                PreviewFiles::new(p.every, &images)
            });
            let mut step = |p: crate::pipeline::Progress| {
                on_step(p.sampling_step, p.sampling_steps);
                if let Some(files) = &mut files {
                    files.on_step(pipeline, &p);
                }
            };
            let requests: Vec<crate::Request> = jobs.iter().map(|j| j.request.clone()).collect();
            pipeline.generate_many(&requests, &mut step)
        };
        let all: Vec<&crate::batch::Job> = jobs.iter().collect();
        match run(&all, on_step) {
            Ok(images) => images.iter().map(|g| png_bytes(g).map_err(|e| e.to_string())).collect(),
            Err(e) if jobs.len() == 1 => vec![Err(e.to_string())],
            Err(_) => all
                .iter()
                .map(|job| {
                    let g = run(std::slice::from_ref(job), on_step).map_err(|e| e.to_string())?;
                    let g = g.first().ok_or_else(|| "no image was produced".to_string())?;
                    png_bytes(g).map_err(|e| e.to_string())
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due_steps(every: usize, reports: &[usize], steps: usize) -> Vec<usize> {
        let mut p = PreviewFiles::new(every, &[]);
        reports.iter().copied().filter(|&s| p.due(s, steps)).collect()
    }

    #[test]
    fn previews_every_n_sampling_steps_once_each_never_the_last() {
        assert_eq!(due_steps(1, &[1, 2, 3, 4], 4), vec![1, 2, 3]);
        assert_eq!(due_steps(2, &[1, 2, 3, 4, 5, 6, 7], 7), vec![2, 4, 6]);
        assert_eq!(due_steps(3, &[1, 2, 3, 4, 5, 6], 6), vec![3]);
        // Heun: every sampling step reported twice (the last once).
        assert_eq!(due_steps(1, &[1, 1, 2, 2, 3], 3), vec![1, 2]);
        assert_eq!(due_steps(5, &[1, 2], 2), Vec::<usize>::new());
    }
}
