//! The training data: an image folder with one subfolder per class, its held-out split, and
//! the checks that run before any training step (every image decodes, no class is empty,
//! at least two classes).

use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

use crate::preprocess::{DecodeLimits, decode_rgb};

/// File extensions read as images (what the server decodes).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// A decoded, labelled image.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
    pub image: RgbImage,
}

/// Images of one folder tree, with the class names taken from the subfolders (sorted, so
/// class i is the i-th name in byte order, as torchvision's `ImageFolder` does).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

/// Why a data folder cannot be trained on. Reported before any training step.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read the data folder {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "data folder {0} has no class subfolders; expected one subfolder per class with images inside"
    )]
    NoClasses(String),
    #[error(
        "data folder {0} has only one class ({1:?}); classification needs at least two class subfolders"
    )]
    OneClass(String, String),
    #[error("class folder {0} has no images (.jpg, .png, .webp, .bmp, .gif, .tiff)")]
    EmptyClass(String),
    #[error("{} unreadable image(s), e.g. {}", .0.len(), .0.iter().take(3).map(|(p, e)| format!("{p}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreadable(Vec<(String, String)>),
    #[error(
        "validation folder {path} has classes {found:?}, which differ from the training classes {expected:?}"
    )]
    ClassMismatch {
        path: String,
        found: Vec<String>,
        expected: Vec<String>,
    },
    #[error(
        "the held-out split leaves {what} empty ({n} images, --val-fraction {fraction}); use more images or another fraction"
    )]
    EmptySplit {
        what: &'static str,
        n: usize,
        fraction: f64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    out.sort();
    Ok(out)
}

/// Class names and every (image file, class index), found without decoding.
pub type Listing = (Vec<String>, Vec<(PathBuf, usize)>);

/// Lists the class folders and their image files, without decoding.
pub fn scan(root: &Path) -> Result<Listing, DataError> {
    let class_dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    let classes: Vec<String> = class_dirs
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    match classes.len() {
        0 => return Err(DataError::NoClasses(root.display().to_string())),
        1 => {
            return Err(DataError::OneClass(
                root.display().to_string(),
                classes[0].clone(),
            ));
        }
        _ => {}
    }
    let mut files = Vec::new();
    for (label, dir) in class_dirs.iter().enumerate() {
        let images: Vec<PathBuf> = sorted_entries(dir)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        if images.is_empty() {
            return Err(DataError::EmptyClass(dir.display().to_string()));
        }
        files.extend(images.into_iter().map(|p| (p, label)));
    }
    Ok((classes, files))
}

/// Scans and decodes every image (so a bad file stops the run before training, with every
/// bad file counted).
pub fn load(root: &Path, limits: &DecodeLimits) -> Result<Dataset, DataError> {
    let (classes, files) = scan(root)?;
    let mut samples = Vec::with_capacity(files.len());
    let mut bad = Vec::new();
    for (path, label) in files {
        let decoded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| decode_rgb(&bytes, limits).map_err(|e| e.to_string()));
        match decoded {
            Ok(image) => samples.push(Sample { path, label, image }),
            Err(e) => bad.push((path.display().to_string(), e)),
        }
    }
    if !bad.is_empty() {
        return Err(DataError::Unreadable(bad));
    }
    Ok(Dataset { classes, samples })
}

/// A validation folder must name the same classes as the training folder.
pub fn check_same_classes(
    train: &Dataset,
    val: &Dataset,
    val_root: &Path,
) -> Result<(), DataError> {
    if train.classes != val.classes {
        return Err(DataError::ClassMismatch {
            path: val_root.display().to_string(),
            found: val.classes.clone(),
            expected: train.classes.clone(),
        });
    }
    Ok(())
}

/// Splits off a held-out set: per class, a seeded shuffle and `round(n * fraction)` images
/// (at least one) held out, so every class is in both parts. Returns (train, held out).
pub fn split(data: Dataset, fraction: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = data.samples.len();
    let mut per_class: Vec<Vec<Sample>> = vec![Vec::new(); data.classes.len()];
    for s in data.samples {
        per_class[s.label].push(s);
    }
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for mut items in per_class {
        items.shuffle(&mut rng);
        let k = ((items.len() as f64 * fraction).round() as usize).max(1);
        if k >= items.len() {
            return Err(DataError::EmptySplit {
                what: "a class's training part",
                n,
                fraction,
            });
        }
        let rest = items.split_off(k);
        held.extend(items);
        train.extend(rest);
    }
    if held.is_empty() {
        return Err(DataError::EmptySplit {
            what: "the held-out set",
            n,
            fraction,
        });
    }
    Ok((
        Dataset {
            classes: data.classes.clone(),
            samples: train,
        },
        Dataset {
            classes: data.classes,
            samples: held,
        },
    ))
}

/// The order of one epoch: a permutation of `0..n` drawn from the epoch's own seed, so a
/// resumed run sees the same batches as an uninterrupted one.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, rgb: [u8; 3]) {
        RgbImage::from_pixel(6, 5, image::Rgb(rgb))
            .save(path)
            .unwrap();
    }

    /// `classes[i]` images in class folder `c{i}`.
    fn folder(counts: &[usize]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, n) in counts.iter().enumerate() {
            let c = dir.path().join(format!("c{i}"));
            std::fs::create_dir(&c).unwrap();
            for j in 0..*n {
                png(&c.join(format!("{j:03}.png")), [i as u8 * 40, j as u8, 7]);
            }
        }
        dir
    }

    #[test]
    fn classes_are_sorted_subfolders_and_labels_follow() {
        let dir = folder(&[2, 3, 1]);
        std::fs::write(dir.path().join("README.txt"), "not a class").unwrap();
        std::fs::write(dir.path().join("c1/notes.txt"), "not an image").unwrap();
        let d = load(dir.path(), &DecodeLimits::default()).unwrap();
        assert_eq!(d.classes, vec!["c0", "c1", "c2"]);
        let labels: Vec<usize> = d.samples.iter().map(|s| s.label).collect();
        assert_eq!(labels, vec![0, 0, 1, 1, 1, 2]);
        assert_eq!(d.samples[0].image.dimensions(), (6, 5));
    }

    #[test]
    fn bad_data_is_refused_with_a_clear_reason() {
        let empty = tempfile::tempdir().unwrap();
        let err = load(empty.path(), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no class subfolders"), "{err}");

        let one = folder(&[3]);
        let err = load(one.path(), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("only one class") && err.contains("c0"),
            "{err}"
        );

        let hole = folder(&[2, 0]);
        let err = load(hole.path(), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no images") && err.contains("c1"), "{err}");

        let broken = folder(&[2, 2]);
        std::fs::write(broken.path().join("c1/bad.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
        std::fs::write(broken.path().join("c0/zero.jpg"), b"").unwrap();
        let err = load(broken.path(), &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("2 unreadable image(s)"), "{err}");
        assert!(err.contains("bad.png") && err.contains("zero.jpg"), "{err}");
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let dir = folder(&[10, 20]);
        let d = load(dir.path(), &DecodeLimits::default()).unwrap();
        let (train, held) = split(d.clone(), 0.2, 7).unwrap();
        assert_eq!(held.samples.len(), 2 + 4);
        assert_eq!(train.samples.len(), 8 + 16);
        assert_eq!(held.samples.iter().filter(|s| s.label == 0).count(), 2);
        let names =
            |d: &Dataset| -> Vec<PathBuf> { d.samples.iter().map(|s| s.path.clone()).collect() };
        for p in names(&held) {
            assert!(!names(&train).contains(&p), "{} in both parts", p.display());
        }
        let (_, again) = split(d.clone(), 0.2, 7).unwrap();
        assert_eq!(names(&held), names(&again), "same seed, same split");
        let (_, other) = split(d, 0.2, 8).unwrap();
        assert_ne!(names(&held), names(&other), "another seed, another split");
    }

    #[test]
    fn split_refuses_to_empty_a_class() {
        let dir = folder(&[1, 5]);
        let d = load(dir.path(), &DecodeLimits::default()).unwrap();
        let err = split(d, 0.2, 0).unwrap_err().to_string();
        assert!(err.contains("training part"), "{err}");
    }

    #[test]
    fn validation_folder_must_have_the_same_classes() {
        let a = folder(&[1, 1]);
        let b = folder(&[1, 1, 1]);
        let da = load(a.path(), &DecodeLimits::default()).unwrap();
        let db = load(b.path(), &DecodeLimits::default()).unwrap();
        assert!(check_same_classes(&da, &da.clone(), a.path()).is_ok());
        let err = check_same_classes(&da, &db, b.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("differ"), "{err}");
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let o = epoch_order(50, 3, 0);
        let mut sorted = o.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(o, epoch_order(50, 3, 0));
        assert_ne!(o, epoch_order(50, 3, 1));
    }
}
