//! LLaVA-1.5 image preprocessing: pad to square with the mean colour, bicubic resize of the
//! shortest edge (Pillow-exact, see [`crate::resize`]), centre crop, rescale, CLIP mean/std normalisation → CHW f32.

use std::path::Path;

use image::{DynamicImage, Rgb, RgbImage};
use strum::{Display, EnumMessage, EnumString, VariantArray};

use crate::config::hf::HfPreprocessorConfig;
use crate::error::{BackboneError, Result};

/// CLIP's normalisation constants, transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_55, 0.261_302_6, 0.275_777_1];
const MAX_CHANNEL: f32 = 255.0;

/// Widest image preprocessing accepts, as long side ÷ short side. Beyond it a centre crop keeps
/// under 5% of the image and padding leaves the content a sliver a patch or two high (LLaVA-1.5's
/// vision tower has 24 patches per side); and the intermediate images of an unbounded ratio
/// (a 1000000×1 image padded or resized to a 336-pixel short side) do not fit in memory.
pub const MAX_ASPECT_RATIO: u32 = 20;

/// Largest image any preprocessing step may build, in pixels (8192², 192 MiB as RGB): the
/// padded square and the resized image are checked against it before they are allocated.
pub const MAX_INTERMEDIATE_PIXELS: u64 = 8192 * 8192;

/// How an image that is not square becomes the vision tower's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, VariantArray, EnumMessage)]
#[strum(serialize_all = "lowercase")]
pub enum ImageAspect {
    /// Pad to a square with the mean colour, then resize: the whole image is seen (how LLaVA-1.5
    /// was trained and evaluated, `image_aspect_ratio = "pad"`).
    Pad,
    /// Resize the short side, then cut the centre square: the ends of the long side are lost
    /// (a llava-hf checkpoint's `CLIPImageProcessor`).
    Crop,
}

/// Preprocessing parameters, read from `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocessor {
    /// Pad to a square with the mean colour first (LLaVA-1.5's `image_aspect_ratio = "pad"`).
    pub pad_to_square: bool,
    /// Target of the shortest edge when resizing; `None` = no resize.
    pub shortest_edge: Option<usize>,
    /// `(height, width)` of the centre crop; `None` = no crop.
    pub crop: Option<(usize, usize)>,
    /// Multiplier applied to 0..255 values; `None` = no rescale.
    pub rescale_factor: Option<f64>,
    /// Per-channel `(mean, std)`; `None` = no normalisation.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl ImagePreprocessor {
    /// CLIP ViT-L/14-336 as LLaVA-1.5 uses it, for a given input resolution.
    pub fn llava_default(image_size: usize) -> Self {
        Self {
            pad_to_square: true,
            shortest_edge: Some(image_size),
            crop: Some((image_size, image_size)),
            rescale_factor: Some(1.0 / f64::from(MAX_CHANNEL)),
            normalize: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// From a `preprocessor_config.json`. `pad_default` applies when it has no `do_pad`
    /// (the original LLaVA decides padding in the model config instead).
    pub fn from_hf(cfg: &HfPreprocessorConfig, pad_default: bool) -> Self {
        let edge = |v: &Option<serde_json::Value>| -> Option<(usize, usize)> {
            let v = v.as_ref()?;
            if let Some(n) = v.as_u64() {
                return Some((n as usize, n as usize));
            }
            if let Some(n) = v.get("shortest_edge").and_then(|n| n.as_u64()) {
                return Some((n as usize, n as usize));
            }
            Some((v.get("height")?.as_u64()? as usize, v.get("width")?.as_u64()? as usize))
        };
        let triple = |v: &Option<Vec<f64>>, default: [f32; 3]| match v.as_deref() {
            Some([a, b, c]) => [*a as f32, *b as f32, *c as f32],
            _ => default,
        };
        Self {
            pad_to_square: cfg.do_pad.unwrap_or(pad_default),
            shortest_edge: cfg.do_resize.then(|| edge(&cfg.size).map(|(h, _)| h)).flatten(),
            crop: cfg.do_center_crop.then(|| edge(&cfg.crop_size)).flatten(),
            rescale_factor: cfg.do_rescale.then_some(cfg.rescale_factor),
            normalize: cfg.do_normalize.then(|| (triple(&cfg.image_mean, CLIP_MEAN), triple(&cfg.image_std, CLIP_STD))),
        }
    }

    /// The same preprocessing with the aspect handling `aspect` asks for instead of the
    /// checkpoint's own. Cropping needs a crop size: without one (a processor that only resizes),
    /// the shortest-edge size is used.
    pub fn with_aspect(self, aspect: ImageAspect) -> Self {
        match aspect {
            ImageAspect::Pad => Self { pad_to_square: true, ..self },
            ImageAspect::Crop => {
                let crop = self.crop.or(self.shortest_edge.map(|edge| (edge, edge)));
                Self { pad_to_square: false, crop, ..self }
            }
        }
    }

    /// The aspect handling this preprocessing applies.
    pub fn aspect(&self) -> ImageAspect {
        if self.pad_to_square {
            ImageAspect::Pad
        } else {
            ImageAspect::Crop
        }
    }

    /// The padding colour: the normalisation mean in 0..255, truncated as LLaVA does
    /// (`tuple(int(x * 255) for x in image_mean)` = (122, 116, 104) for CLIP).
    pub fn background(&self) -> Rgb<u8> {
        let mean = self.normalize.map_or([0.0; 3], |(m, _)| m);
        Rgb(mean.map(|m| (m * MAX_CHANNEL) as u8))
    }

    /// Output `(height, width)` for an input of `(height, width)`.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        let (h, w) = self.padded_size(height, width);
        self.crop.unwrap_or(self.resized_size(h, w))
    }

    /// Whether an image of `width` × `height` can be preprocessed: its aspect ratio is at most
    /// [`MAX_ASPECT_RATIO`] and no step builds an image over [`MAX_INTERMEDIATE_PIXELS`].
    /// Needs only the dimensions, so it runs before an image is decoded.
    pub fn check_input(&self, width: u32, height: u32) -> Result<()> {
        let refuse = |reason: String| Err(BackboneError::UnsupportedImage { width, height, reason });
        let (short, long) = (width.min(height), width.max(height));
        if short == 0 {
            return refuse("it has no pixels".into());
        }
        if long / short > MAX_ASPECT_RATIO || (long / short == MAX_ASPECT_RATIO && long % short != 0) {
            return refuse(format!("its aspect ratio is over {MAX_ASPECT_RATIO}:1"));
        }
        let padded = self.padded_size(height as usize, width as usize);
        let resized = self.resized_size(padded.0, padded.1);
        for (step, (h, w)) in [("padded", padded), ("resized", resized)] {
            if (h as u64) * (w as u64) > MAX_INTERMEDIATE_PIXELS {
                return refuse(format!(
                    "its {step} image would be {w}x{h}, over the limit of {MAX_INTERMEDIATE_PIXELS} pixels"
                ));
            }
        }
        Ok(())
    }

    /// `(height, width)` after padding.
    fn padded_size(&self, height: usize, width: usize) -> (usize, usize) {
        let side = height.max(width);
        if self.pad_to_square {
            (side, side)
        } else {
            (height, width)
        }
    }

    /// `(height, width)` after the shortest-edge resize of a `height` × `width` image.
    fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        self.shortest_edge.map_or((height, width), |edge| resized_dims(height, width, edge))
    }

    /// Decoded image → `[3, height, width]` values, channel-major; refuses an image
    /// [`ImagePreprocessor::check_input`] refuses, before building anything.
    pub fn preprocess(&self, image: &DynamicImage) -> Result<(Vec<f32>, [usize; 3])> {
        self.check_input(image.width(), image.height())?;
        let mut rgb = image.to_rgb8();
        if self.pad_to_square {
            rgb = pad_to_square(&rgb, self.background());
        }
        let (h, w) = self.resized_size(rgb.height() as usize, rgb.width() as usize);
        if (h, w) != (rgb.height() as usize, rgb.width() as usize) {
            rgb = crate::resize::resize_bicubic(&rgb, w as u32, h as u32);
        }
        if let Some((ch, cw)) = self.crop {
            rgb = center_crop(&rgb, ch, cw);
        }
        let (h, w) = (rgb.height() as usize, rgb.width() as usize);
        let mut out = vec![0.0f32; 3 * h * w];
        for (x, y, pixel) in rgb.enumerate_pixels() {
            for c in 0..3 {
                // Rescaled in f64 then rounded to f32, as transformers' `rescale` does.
                let mut v = match self.rescale_factor {
                    Some(scale) => (f64::from(pixel.0[c]) * scale) as f32,
                    None => f32::from(pixel.0[c]),
                };
                if let Some((mean, std)) = self.normalize {
                    v = (v - mean[c]) / std[c];
                }
                out[c * h * w + y as usize * w + x as usize] = v;
            }
        }
        Ok((out, [3, h, w]))
    }
}

/// HF `get_resize_output_image_size(default_to_square=False)`: the short side becomes `edge`,
/// the long side `int(edge * long / short)`.
fn resized_dims(height: usize, width: usize, edge: usize) -> (usize, usize) {
    if height <= width {
        (edge, (edge as f64 * width as f64 / height as f64) as usize)
    } else {
        ((edge as f64 * height as f64 / width as f64) as usize, edge)
    }
}

fn pad_to_square(image: &RgbImage, background: Rgb<u8>) -> RgbImage {
    let (w, h) = image.dimensions();
    if w == h {
        return image.clone();
    }
    let side = w.max(h);
    let mut square = RgbImage::from_pixel(side, side, background);
    image::imageops::replace(&mut square, image, ((side - w) / 2) as i64, ((side - h) / 2) as i64);
    square
}

/// HF `center_crop`: offsets `(size - crop) // 2`, padding with zeros where the crop is larger.
fn center_crop(image: &RgbImage, crop_h: usize, crop_w: usize) -> RgbImage {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let top = (h - crop_h as i64).div_euclid(2);
    let left = (w - crop_w as i64).div_euclid(2);
    let mut out = RgbImage::new(crop_w as u32, crop_h as u32);
    image::imageops::replace(&mut out, image, -left, -top);
    out
}

/// Decodes PNG, JPEG or WebP bytes; `name` appears in errors.
pub fn decode_image(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    let format = image::guess_format(bytes).map_err(|e| BackboneError::Image {
        source_name: name.to_string(),
        reason: format!("not a recognised image format ({e}); PNG, JPEG and WebP are supported"),
    })?;
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| BackboneError::Image { source_name: name.to_string(), reason: e.to_string() })
}

/// Reads and decodes an image file.
pub fn load_image(path: &Path) -> Result<DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| BackboneError::io(path, e))?;
    decode_image(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop_preprocessor() -> ImagePreprocessor {
        ImagePreprocessor { pad_to_square: false, ..ImagePreprocessor::llava_default(336) }
    }

    #[test]
    fn extreme_aspect_ratios_are_refused_before_anything_is_built() {
        for pre in [ImagePreprocessor::llava_default(336), crop_preprocessor()] {
            for (w, h) in [(1_000_000, 1), (1, 200_000), (21, 1), (0, 5)] {
                let error = pre.check_input(w, h).unwrap_err();
                assert!(matches!(error, BackboneError::UnsupportedImage { .. }), "{w}x{h}: {error}");
            }
            assert!(pre.check_input(20, 1).is_ok() && pre.check_input(640, 480).is_ok());
            let sliver = DynamicImage::new_rgb8(100_000, 1);
            assert!(pre.preprocess(&sliver).is_err());
        }
    }

    #[test]
    fn oversized_intermediate_images_are_refused() {
        // Padding a 20000x1000 image builds a 20000² square; resizing it keeps it 336².
        assert!(ImagePreprocessor::llava_default(336).check_input(20_000, 1_000).is_err());
        // Without padding the resize goes straight to 6720x336.
        assert!(crop_preprocessor().check_input(20_000, 1_000).is_ok());
        let upscale = ImagePreprocessor { shortest_edge: Some(10_000), ..crop_preprocessor() };
        assert!(upscale.check_input(100, 100).is_err());
    }

    #[test]
    fn image_aspect_pads_or_crops_a_wide_image() {
        // A white 40x20 image with a red band along its left end; raw 0..255 values out, a black
        // padding colour (no normalisation).
        let band = 6;
        let wide = RgbImage::from_fn(40, 20, |x, _| if x < band { Rgb([255, 0, 0]) } else { Rgb([255; 3]) });
        let wide = DynamicImage::ImageRgb8(wide);
        let side = 20;
        let checkpoint = ImagePreprocessor {
            pad_to_square: false,
            shortest_edge: Some(side),
            crop: Some((side, side)),
            rescale_factor: None,
            normalize: None,
        };
        let (padded, _) = checkpoint.clone().with_aspect(ImageAspect::Pad).preprocess(&wide).unwrap();
        let (cropped, _) = checkpoint.clone().with_aspect(ImageAspect::Crop).preprocess(&wide).unwrap();
        let reddish =
            |values: &[f32], x: usize, y: usize| values[y * side + x] > 2.0 * values[side * side + y * side + x];
        let any_red = |values: &[f32]| (0..side).any(|y| (0..side).any(|x| reddish(values, x, y)));
        // Padding keeps the whole width, band included, between black bands above and below;
        // cropping cuts the band off.
        assert!(reddish(&padded, 0, side / 2));
        assert_eq!(padded[0], 0.0);
        assert!(!any_red(&cropped));
        assert_eq!(checkpoint.clone().with_aspect(ImageAspect::Pad).aspect(), ImageAspect::Pad);
        assert_eq!(checkpoint.with_aspect(ImageAspect::Crop).aspect(), ImageAspect::Crop);
    }

    #[test]
    fn cropping_without_a_crop_size_crops_to_the_resized_short_side() {
        let resize_only = ImagePreprocessor { pad_to_square: true, crop: None, ..ImagePreprocessor::llava_default(56) };
        let (_, shape) =
            resize_only.with_aspect(ImageAspect::Crop).preprocess(&DynamicImage::new_rgb8(90, 30)).unwrap();
        assert_eq!(shape, [3, 56, 56]);
    }

    #[test]
    fn the_widest_accepted_image_is_preprocessed() {
        for pre in [ImagePreprocessor::llava_default(56), crop_preprocessor()] {
            let wide = DynamicImage::new_rgb8(400, 20);
            let (_, shape) = pre.preprocess(&wide).unwrap();
            let side = pre.crop.unwrap().0;
            assert_eq!(shape, [3, side, side]);
        }
    }
}
