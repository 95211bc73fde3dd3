//! `twigvlm serve` and `twigvlm bench-serve`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::named::named;
use base64::Engine as _;
use twigvlm_backbone::ops::DecodeOps;
use twigvlm_engine::{BackendJob, DecoderKind, DraftTree, PrefillPolicy, PruningSpec};
use twigvlm_eval::load::{run_load_curve, LoadOptions, LoadReport};
use twigvlm_eval::plot::{line_chart, Labels, Series};
use twigvlm_serve::{serve, AccessPolicy, ConnectionLimits, ImageLimits, RequestDefaults, RequestLimits, ServeOptions};

/// Time the responses still being written get once a stopping server closes its socket.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients send (default: the model directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests that may wait for the engine; beyond that the server answers 429.
    #[arg(long, default_value_t = 16)]
    pub queue_size: usize,
    /// Tokens generated when a request gives no max_tokens.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Largest image a request may carry, in bytes (after base64 decoding).
    #[arg(long, default_value_t = 10 << 20)]
    pub max_image_bytes: usize,
    /// Largest image a request may carry, in pixels (width × height).
    #[arg(long, default_value_t = 4096 * 4096)]
    pub max_image_pixels: u64,
    /// Fetch http(s) image URLs named by clients (off: only data: URLs are accepted).
    #[arg(long)]
    pub allow_remote_images: bool,
    /// Longest a request may run, in seconds, from arrival to its last token; it is stopped then
    /// and answered 504.
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Most nodes of a draft tree a request may ask for (at most 64).
    #[arg(long, default_value_t = DraftTree::MAX_NODES)]
    pub max_draft_tree_nodes: usize,
    /// Host names answered besides loopback ones when bound to a loopback address (repeat for
    /// more); a server bound to another address answers any host.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// Web origins allowed to call the server from a browser (e.g. https://app.example; repeat
    /// for more); they get CORS answers. The server's own page is always allowed.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Connections open at once; more are closed when accepted.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers before its connection is closed.
    #[arg(long, default_value_t = 10.0)]
    pub header_read_timeout: f64,
    #[command(flatten)]
    pub batch: super::BatchArgs,
    /// MiB of prompt caches kept for follow-up turns: a request whose prompt begins with an
    /// earlier unpruned prompt (a chat's history about the same image) continues from its caches
    /// instead of running the image and those tokens again. 0 keeps none.
    #[arg(long, default_value_t = 512)]
    pub prompt_cache_mib: usize,
    /// The speculative decoder's draft length by default (requests may override it).
    #[command(flatten)]
    pub draft: super::DraftArgs,
    /// The pruning requests get by default (each request may override policy, budget and
    /// FinalWipe).
    #[command(flatten)]
    pub pruning: super::PruningArgs,
    #[command(flatten)]
    pub model: super::ModelArgs,
}

impl super::ModelCommand for ServeArgs {
    fn model(&self) -> &super::ModelArgs {
        &self.model
    }
}

impl BackendJob for ServeArgs {
    type Output = anyhow::Result<()>;

    fn run<B: DecodeOps>(self, device: B::Device) -> anyhow::Result<()> {
        let args = self;
        let pruning = args.pruning.spec();
        // A twig, when given, is attached whatever the default decoder: requests may ask for it.
        let twig_given = args.model.decoder.twig.is_some();
        let (mut engine, decoder) = super::load_engine::<B>(&args.model, device, &pruning, twig_given)?;
        engine.keep_prompt_caches(args.prompt_cache_mib << 20);
        let model_name = match &args.served_model_name {
            Some(name) => name.clone(),
            None => args
                .model
                .model
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .context("name the model with --served-model-name")?,
        };
        anyhow::ensure!(args.queue_size > 0, "--queue-size must be at least 1");
        anyhow::ensure!(
            (1..=DraftTree::MAX_NODES).contains(&args.max_draft_tree_nodes),
            "--max-draft-tree-nodes must lie in 1..={}",
            DraftTree::MAX_NODES
        );
        anyhow::ensure!(args.max_connections > 0, "--max-connections must be at least 1");
        let seconds = |value: f64, flag: &str| {
            anyhow::ensure!(value.is_finite() && value > 0.0, "{flag} must be a positive number of seconds");
            Ok(Duration::from_secs_f64(value))
        };
        let request_timeout = seconds(args.request_timeout, "--request-timeout")?;
        let header_read_timeout = seconds(args.header_read_timeout, "--header-read-timeout")?;
        let options = ServeOptions {
            address: SocketAddr::new(args.host, args.port),
            model_name,
            queue_capacity: args.queue_size,
            images: ImageLimits {
                max_bytes: args.max_image_bytes,
                max_pixels: args.max_image_pixels,
                allow_remote: args.allow_remote_images,
            },
            defaults: RequestDefaults {
                pruning: if pruning.policy == PrefillPolicy::None { PruningSpec::none() } else { pruning },
                decoder,
                draft: args.draft.config(),
                max_tokens: args.default_max_tokens,
            },
            limits: RequestLimits { max_draft_tree_nodes: args.max_draft_tree_nodes, ..RequestLimits::default() },
            request_timeout,
            access: AccessPolicy { allowed_hosts: args.allowed_hosts, allowed_origins: args.allowed_origins },
            connections: ConnectionLimits {
                max_connections: args.max_connections,
                header_read_timeout,
                drain_timeout: SHUTDOWN_DRAIN,
            },
            batch: args.batch.limits(),
        };
        Ok(serve(engine, options)?)
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchServeArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The model id the server serves.
    #[arg(long)]
    pub model: String,
    /// Concurrent clients, one run per count (closed loop: each client sends its next request
    /// when its last one has ended).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub clients: Vec<usize>,
    /// Requests each client sends per run.
    #[arg(long, default_value_t = 8)]
    pub requests_per_client: usize,
    /// Decoders the requests ask for, one set of runs each (`base`, `twig-only`, `ssd`; the
    /// server needs a twig for the last two); default: the server's own.
    #[arg(long, value_delimiter = ',', value_parser = named::<DecoderKind>())]
    pub decoders: Vec<DecoderKind>,
    #[arg(long, default_value_t = 32)]
    pub max_tokens: usize,
    #[arg(long, default_value = "Describe the image.")]
    pub prompt: String,
    /// Image sent with every request (as a data: URL).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Write `<name>.json` and `<name>-throughput.png`, `<name>-latency.png` here.
    #[arg(long)]
    pub results_dir: Option<PathBuf>,
    /// The file names' stem under --results-dir.
    #[arg(long, default_value = "serve")]
    pub name: String,
}

/// What `bench-serve --results-dir` writes.
#[derive(Debug, serde::Serialize)]
struct BenchServeReport<'a> {
    url: &'a str,
    model: &'a str,
    prompt: &'a str,
    image: Option<String>,
    max_tokens: usize,
    requests_per_client: usize,
    runs: &'a [LoadReport],
}

pub fn bench_serve(args: BenchServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.clients.is_empty() && !args.clients.contains(&0), "--clients must list positive counts");
    anyhow::ensure!(args.requests_per_client > 0, "--requests-per-client must be at least 1");
    let image_url = args
        .image
        .as_ref()
        .map(|path| -> anyhow::Result<String> {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read --image {}", path.display()))?;
            // The server sniffs the bytes itself; the media type is for the URL's form.
            let mime = image::guess_format(&bytes).unwrap_or(image::ImageFormat::Png).to_mime_type();
            Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
        })
        .transpose()?;
    let options = LoadOptions {
        url: args.url.trim_end_matches('/').to_string(),
        model: args.model.clone(),
        clients: 1,
        requests: 1,
        max_tokens: args.max_tokens,
        prompt: args.prompt.clone(),
        image_url,
        decoder: None,
    };
    let decoders: Vec<Option<String>> = match args.decoders.is_empty() {
        true => vec![None],
        false => args.decoders.iter().map(|d| Some(d.to_string())).collect(),
    };
    let runs = run_load_curve(&options, &decoders, &args.clients, args.requests_per_client, |report| {
        eprintln!(
            "{:>9} {:>2} clients: {:6.1} tokens/s, p50 latency {:6.0} ms, p50 first token {:6.0} ms, {} failed",
            report.decoder.as_deref().unwrap_or("default"),
            report.clients,
            report.tokens_per_s,
            report.latency_ms.p50,
            report.time_to_first_token_ms.p50,
            report.failed.iter().map(|(_, n)| n).sum::<usize>(),
        );
    })?;
    let report = BenchServeReport {
        url: &options.url,
        model: &args.model,
        prompt: &args.prompt,
        image: args.image.as_ref().map(|p| p.display().to_string()),
        max_tokens: args.max_tokens,
        requests_per_client: args.requests_per_client,
        runs: &runs,
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(dir) = &args.results_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join(format!("{}.json", args.name)), json + "\n")?;
        plot_load(dir, &args.name, &runs)?;
    }
    Ok(())
}

/// Throughput, and latency and time to first token, against clients: one line per decoder.
fn plot_load(dir: &Path, name: &str, runs: &[LoadReport]) -> anyhow::Result<()> {
    let mut decoders: Vec<Option<String>> = runs.iter().map(|r| r.decoder.clone()).collect();
    decoders.dedup();
    let label = |decoder: &Option<String>| decoder.clone().unwrap_or_else(|| "default decoder".into());
    let line = |decoder: &Option<String>, what: &str, value: &dyn Fn(&LoadReport) -> f64| Series {
        name: format!("{} {what}", label(decoder)).trim().to_string(),
        points: runs.iter().filter(|r| &r.decoder == decoder).map(|r| (r.clients as f64, value(r))).collect(),
    };
    let throughput: Vec<Series> = decoders.iter().map(|d| line(d, "", &|r| r.tokens_per_s)).collect();
    let title = format!("{name}: completion tokens per second, all clients together");
    let labels = Labels { title: &title, x: "concurrent clients", y: "tokens/s" };
    line_chart(&dir.join(format!("{name}-throughput.png")), &labels, &throughput)?;
    let latency: Vec<Series> = decoders
        .iter()
        .flat_map(|d| {
            [
                line(d, "latency p50", &|r| r.latency_ms.p50),
                line(d, "latency p99", &|r| r.latency_ms.p99),
                line(d, "first token p50", &|r| r.time_to_first_token_ms.p50),
            ]
        })
        .collect();
    let title = format!("{name}: request latency and time to first token");
    let labels = Labels { title: &title, x: "concurrent clients", y: "ms" };
    line_chart(&dir.join(format!("{name}-latency.png")), &labels, &latency)
}
