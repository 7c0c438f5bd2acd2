//! Model files on the Hugging Face hub, named `hf://ORG/NAME[@REV]/FILE` and found in
//! the local hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) — never downloaded: the toolkit runs on machines
//! without internet access, so it behaves as if `HF_HUB_OFFLINE=1` were always set.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::{Cache, Repo, RepoType};

/// The scheme that marks a hub reference.
pub const SCHEME: &str = "hf://";

/// A file in a hub model repository: `hf://ORG/NAME[@REV]/FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// `ORG/NAME`.
    pub repo: String,
    /// Branch, tag or commit hash; `main` when not given.
    pub revision: String,
    /// Path of the file inside the repository (may contain `/`).
    pub file: String,
}

/// Why a hub reference cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The reference is not of the form `hf://ORG/NAME[@REV]/FILE`.
    #[error("bad hub reference `{reference}`: {message} (expected hf://ORG/NAME[@REV]/FILE)")]
    Syntax {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file is not in the local cache.
    #[error(
        "`{file}` is not in the Hugging Face cache `{}` (this tool never downloads). \
         Fetch it where the hub is reachable with\n  huggingface-cli download {} {} --revision {}\n\
         and copy that cache here, or point HF_HOME / HF_HUB_CACHE at a cache that has it",
        cache.display(), file.repo, file.file, file.revision
    )]
    NotCached {
        /// The file looked for.
        file: HubFile,
        /// The cache folder searched.
        cache: PathBuf,
    },
}

impl FromStr for HubFile {
    type Err = HubError;

    fn from_str(reference: &str) -> Result<Self, HubError> {
        let bad = |message: &str| HubError::Syntax {
            reference: reference.to_string(),
            message: message.to_string(),
        };
        let rest = reference
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("it does not start with hf://"))?;
        let mut parts = rest.splitn(3, '/');
        let (Some(org), Some(name_rev), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it needs an organisation, a repository and a file"));
        };
        let (name, revision) = match name_rev.split_once('@') {
            Some((name, rev)) => (name, rev),
            None => (name_rev, "main"),
        };
        if org.is_empty() || name.is_empty() || revision.is_empty() || file.is_empty() {
            return Err(bad(
                "organisation, repository, revision and file must not be empty",
            ));
        }
        if file
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad(
                "the file path must not have empty, `.` or `..` components",
            ));
        }
        Ok(HubFile {
            repo: format!("{org}/{name}"),
            revision: revision.to_string(),
            file: file.to_string(),
        })
    }
}

impl fmt::Display for HubFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}@{}/{}", self.repo, self.revision, self.file)
    }
}

impl HubFile {
    /// The cached copy of the file in the hub cache folder `cache` (the folder that
    /// holds `models--ORG--NAME`). Branches and tags go through `refs/`; a full
    /// commit hash names its snapshot directly.
    pub fn find_in(&self, cache: &Path) -> Result<PathBuf, HubError> {
        let repo = Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone());
        let by_commit = cache
            .join(repo.folder_name())
            .join("snapshots")
            .join(&self.revision)
            .join(&self.file);
        Cache::new(cache.to_path_buf())
            .repo(repo)
            .get(&self.file)
            .or_else(|| by_commit.is_file().then_some(by_commit))
            .ok_or_else(|| HubError::NotCached {
                file: self.clone(),
                cache: cache.to_path_buf(),
            })
    }

    /// The cached copy of the file in the cache the environment names.
    pub fn find(&self) -> Result<PathBuf, HubError> {
        self.find_in(&cache_dir())
    }
}

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (the conventions of the `huggingface_hub` library).
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Cache::from_env().path().clone(),
    }
}

/// A model file argument: a local path, or a hub reference resolved through the
/// cache.
pub fn resolve(reference: &str) -> Result<PathBuf, HubError> {
    if reference.starts_with(SCHEME) {
        reference.parse::<HubFile>()?.find()
    } else {
        Ok(PathBuf::from(reference))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let f: HubFile = "hf://org/net@v1.0/sub/model.safetensors".parse().unwrap();
        assert_eq!(f.repo, "org/net");
        assert_eq!(f.revision, "v1.0");
        assert_eq!(f.file, "sub/model.safetensors");
        let g: HubFile = "hf://org/net/model.safetensors".parse().unwrap();
        assert_eq!(g.revision, "main");
        assert_eq!(g.to_string(), "hf://org/net@main/model.safetensors");
        for bad in [
            "org/net/m",
            "hf://org/m",
            "hf://org/net@/m",
            "hf:///net/m",
            "hf://org/net/../m",
        ] {
            let e = bad.parse::<HubFile>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn finds_files_by_ref_and_by_commit_and_says_how_to_fetch_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let repo = dir.path().join("models--org--net");
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::write(snap.join("model.safetensors"), b"x").unwrap();
        let expect = snap.join("model.safetensors");
        for r in [
            "hf://org/net/model.safetensors".to_string(),
            format!("hf://org/net@{commit}/model.safetensors"),
        ] {
            let f: HubFile = r.parse().unwrap();
            assert_eq!(f.find_in(dir.path()).unwrap(), expect);
        }
        let missing: HubFile = "hf://org/net@v2/model.safetensors".parse().unwrap();
        let e = missing.find_in(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("huggingface-cli download org/net model.safetensors --revision v2"),
            "{e}"
        );
    }
}
