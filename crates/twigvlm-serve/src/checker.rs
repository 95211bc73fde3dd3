//! Admission: a request body, checked against the model and this server's defaults and limits,
//! becomes work for the engine or a 4xx. Nothing here runs the model, so a bad request costs no
//! engine time; every bound that keeps work small (image size, draft tree, explain policies,
//! prompt length) is checked here before anything is queued.

use serde::Deserialize;
use twigvlm_engine::explain::policy_specs;
use twigvlm_engine::{GenerateRequest, ModelFacts, PrefillPolicy, Prompt, RequestError, VisualBudget};

use crate::api::ChatCompletionRequest;
use crate::error::ApiError;
use crate::images::ImageLimits;
use crate::request::{self, Checked, RequestDefaults, RequestLimits};
use crate::worker::ExplainJob;

/// Everything a request is checked against before it is queued.
#[derive(Clone)]
pub struct RequestChecker {
    /// The id clients send as `model`.
    pub model_name: String,
    pub facts: ModelFacts,
    pub defaults: RequestDefaults,
    pub limits: RequestLimits,
    pub images: ImageLimits,
}

/// `POST /v1/explain`: which patches the pruning policies keep, drawn over the image (PNG).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainBody {
    /// A `data:` URL (or http(s) where allowed), as in a chat request.
    image_url: String,
    prompt: String,
    /// R̄: a token count or a share (`"11.1%"`).
    visual_budget: String,
    /// The policies drawn side by side (default: twig when the server has one, and fastv).
    #[serde(default)]
    policies: Option<Vec<String>>,
    #[serde(default)]
    final_wipe: Option<usize>,
}

impl RequestChecker {
    /// A chat completion body, checked, with its image decoded (blocking: call it off the async
    /// threads).
    pub fn chat(&self, body: &[u8]) -> Result<Checked, ApiError> {
        let request = ChatCompletionRequest::parse(body)?;
        if request.model != self.model_name {
            return Err(ApiError::model_not_found(&request.model, &self.model_name));
        }
        let mut checked = request::check(&request, &self.facts, &self.defaults, &self.limits)?;
        request::attach_image(&mut checked, &self.images, &self.facts)?;
        Ok(checked)
    }

    /// An explain body, checked, with its image decoded (blocking).
    pub fn explain(&self, body: &[u8]) -> Result<ExplainJob, ApiError> {
        let body: ExplainBody = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid_request(format!("invalid explain request: {e}"), None))?;
        let budget: VisualBudget = body
            .visual_budget
            .parse()
            .map_err(|e| ApiError::invalid_request(format!("invalid visual_budget: {e}"), Some("visual_budget")))?;
        let policies = self.explain_policies(body.policies)?;
        let specs = policy_specs(&policies, budget, body.final_wipe);
        if specs.is_empty() {
            return Err(ApiError::invalid_request("policies names no pruning policy", Some("policies")));
        }
        for (name, spec) in &specs {
            self.facts
                .check_pruning(spec)
                .map_err(|e| ApiError::invalid_request(format!("{name}: {e}"), Some("policies")))?;
        }
        let image = request::load_image(&body.image_url, &self.images, &self.facts)?;
        // The prompt is checked as a chat request's is: it must fit the context with the image.
        let request = GenerateRequest::greedy(Prompt::User(body.prompt), Some(image), 1);
        if let Err(e) = request.validate(&self.facts) {
            let error = ApiError::invalid_request(e.to_string(), Some("prompt"));
            return Err(match e {
                RequestError::PromptTooLong { .. } => error.with_code("context_length_exceeded"),
                _ => error,
            });
        }
        let GenerateRequest { prompt: Prompt::User(prompt), image: Some(image), .. } = request else {
            unreachable!("built above with a user prompt and an image")
        };
        Ok(ExplainJob { prompt, image, policies: specs })
    }

    /// The policies an explain request names (at most the server's limit), or by default the
    /// twig (when the server has one) and FastV.
    fn explain_policies(&self, names: Option<Vec<String>>) -> Result<Vec<PrefillPolicy>, ApiError> {
        let limit = self.limits.max_explain_policies;
        match names {
            Some(names) if names.len() > limit => Err(ApiError::invalid_request(
                format!("policies names {} policies; this server draws at most {limit}", names.len()),
                Some("policies"),
            )),
            Some(names) => names
                .iter()
                .map(|name| {
                    name.parse::<PrefillPolicy>().map_err(|e| {
                        ApiError::invalid_request(format!("invalid policy {name:?}: {e}"), Some("policies"))
                    })
                })
                .collect(),
            None => Ok([PrefillPolicy::Twig, PrefillPolicy::FastV]
                .into_iter()
                .filter(|&p| !p.ranks_with_twig() || self.facts.has_twig())
                .collect()),
        }
    }
}
