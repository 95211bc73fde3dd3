//! Images of a request: `data:` URLs (base64), or `http(s)` URLs when the server allows fetching
//! them; checked against byte and pixel limits before anything is decoded.

use std::io::{Cursor, Read};

use axum::http::StatusCode;
use base64::Engine as _;
use image::{DynamicImage, ImageReader};

use crate::error::ApiError;

/// What the server accepts as an image.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest encoded image (after base64 decoding).
    pub max_bytes: usize,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Fetch `http(s)` image URLs (off by default: a server that fetches what clients name can be
    /// turned against the network it sits in).
    pub allow_remote: bool,
}

const PARAM: &str = "messages";

fn too_large(message: String) -> ApiError {
    ApiError::invalid_request(message, Some(PARAM))
        .with_code("image_too_large")
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

impl ImageLimits {
    /// The encoded bytes behind an image URL.
    fn bytes(&self, url: &str) -> Result<Vec<u8>, ApiError> {
        if let Some(rest) = url.strip_prefix("data:") {
            let (header, payload) = rest.split_once(',').ok_or_else(|| {
                ApiError::invalid_request("a data: URL needs a comma before its payload", Some(PARAM))
            })?;
            if !header.ends_with(";base64") {
                return Err(ApiError::invalid_request(
                    "image data: URLs must be base64 (data:image/png;base64,...)",
                    Some(PARAM),
                ));
            }
            // Base64 carries 3 bytes in 4 characters: refuse before decoding anything too big.
            if payload.len() / 4 * 3 > self.max_bytes + 3 {
                return Err(too_large(format!(
                    "the image is larger than this server's limit of {} bytes",
                    self.max_bytes
                )));
            }
            let bytes = base64::engine::general_purpose::STANDARD.decode(payload.trim()).map_err(|e| {
                ApiError::invalid_request(format!("the image's base64 data is invalid: {e}"), Some(PARAM))
            })?;
            self.check_size(bytes.len())?;
            return Ok(bytes);
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            if !self.allow_remote {
                return Err(ApiError::invalid_request(
                    "remote image URLs are disabled on this server (start it with --allow-remote-images); send the image as a data: URL",
                    Some(PARAM),
                )
                .with_code("remote_images_disabled"));
            }
            return self.fetch(url);
        }
        Err(ApiError::invalid_request(
            "an image_url must be a data: URL (or http(s) where the server allows it)",
            Some(PARAM),
        ))
    }

    fn check_size(&self, bytes: usize) -> Result<(), ApiError> {
        if bytes > self.max_bytes {
            return Err(too_large(format!(
                "the image has {bytes} bytes, over this server's limit of {}",
                self.max_bytes
            )));
        }
        Ok(())
    }

    fn fetch(&self, url: &str) -> Result<Vec<u8>, ApiError> {
        let response = ureq::get(url)
            .call()
            .map_err(|e| ApiError::invalid_request(format!("cannot fetch the image {url}: {e}"), Some(PARAM)))?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(self.max_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ApiError::invalid_request(format!("cannot read the image {url}: {e}"), Some(PARAM)))?;
        self.check_size(bytes.len())?;
        Ok(bytes)
    }

    /// Decodes the image an URL names (PNG, JPEG or WebP), refusing anything over the limits or
    /// whose width and height `fits` refuses, before anything is decoded.
    pub fn load(&self, url: &str, fits: impl Fn(u32, u32) -> Result<(), ApiError>) -> Result<DynamicImage, ApiError> {
        let bytes = self.bytes(url)?;
        let not_an_image = |e: &dyn std::fmt::Display| {
            ApiError::invalid_request(format!("the image cannot be decoded (PNG, JPEG or WebP): {e}"), Some(PARAM))
                .with_code("invalid_image")
        };
        let reader = || ImageReader::new(Cursor::new(&bytes)).with_guessed_format().map_err(|e| not_an_image(&e));
        if reader()?.format().is_none() {
            return Err(not_an_image(&"unknown format"));
        }
        let (width, height) = reader()?.into_dimensions().map_err(|e| not_an_image(&e))?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.max_pixels {
            return Err(too_large(format!(
                "the image is {width}x{height} = {pixels} pixels, over this server's limit of {}",
                self.max_pixels
            )));
        }
        fits(width, height)?;
        reader()?.decode().map_err(|e| not_an_image(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_url(image: &DynamicImage) -> String {
        let mut png = Vec::new();
        image.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
    }

    fn any(_: u32, _: u32) -> Result<(), ApiError> {
        Ok(())
    }

    const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_pixels: 64 * 64, allow_remote: false };

    #[test]
    fn decodes_a_png_data_url() {
        let image = DynamicImage::new_rgb8(32, 16);
        let loaded = LIMITS.load(&data_url(&image), any).unwrap();
        assert_eq!((loaded.width(), loaded.height()), (32, 16));
    }

    #[test]
    fn asks_the_model_before_decoding() {
        let wide = data_url(&DynamicImage::new_rgb8(64, 2));
        let refuse = |w: u32, h: u32| Err(ApiError::invalid_request(format!("{w}x{h}"), None));
        assert_eq!(LIMITS.load(&wide, refuse).unwrap_err().message, "64x2");
    }

    #[test]
    fn refuses_what_it_should() {
        let code = |url: &str| LIMITS.load(url, any).unwrap_err().code;
        assert_eq!(code(&data_url(&DynamicImage::new_rgb8(65, 64))), Some("image_too_large"));
        let small = ImageLimits { max_bytes: 100, ..LIMITS };
        assert_eq!(
            small.load(&data_url(&DynamicImage::new_rgb8(64, 64)), any).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(code("https://example.com/cat.png"), Some("remote_images_disabled"));
        let text = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"hello, not an image")
        );
        assert_eq!(code(&text), Some("invalid_image"));
        let mut truncated = data_url(&DynamicImage::new_rgb8(32, 32));
        truncated.truncate(truncated.len() - 40);
        assert!(LIMITS.load(&truncated, any).is_err());
        assert!(LIMITS.load("data:image/png,raw", any).unwrap_err().message.contains("base64"));
        assert!(LIMITS.load("file:///etc/passwd", any).is_err());
    }
}
