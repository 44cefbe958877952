"""One sentence, saying what to do, for each way a Hub call fails (huggingface_hub's errors and the
HTTP client's network errors)."""
from __future__ import annotations

from .errors import HubError


def hub_error(e: Exception, repo: str, filename: str | None = None, endpoint: str | None = None) -> HubError:
    """One sentence for each way a download fails, saying what to do."""
    from huggingface_hub import errors as hf

    what = f"{repo}/{filename}" if filename else repo
    host = endpoint or "the Hugging Face Hub"
    if isinstance(e, hf.GatedRepoError):
        return HubError(f"{repo} is gated: accept its terms at https://huggingface.co/{repo} with your account, then "
                        "log in (`hf auth login`) or set HF_TOKEN, and retry.")
    if isinstance(e, hf.RepositoryNotFoundError):
        return HubError(f"repository {repo} was not found on {host} (or it is private and no valid token was "
                        "given). Check the name, or set HF_TOKEN for a private repo.")
    if isinstance(e, hf.RevisionNotFoundError):
        return HubError(f"{repo}: the requested revision does not exist.")
    if isinstance(e, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError)):
        return HubError(f"{what} is not in the local cache and {host} cannot be reached (offline or no network). "
                        "Connect and retry, or run `python app.py --demo` to use the built-in model.")
    if isinstance(e, (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError)):
        return HubError(f"{what} does not exist on {host}: the repo layout changed or the file name is wrong.")
    if isinstance(e, hf.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return HubError(f"{what}: 401 unauthorized. Set HF_TOKEN (or `hf auth login`) with access to {repo}.")
        if status == 403:
            return HubError(f"{what}: 403 forbidden. Your token has no access to {repo}.")
        return HubError(f"{what}: {host} answered HTTP {status}. The server may be busy: retry later; "
                        "the files already finished are kept in the cache.")
    if isinstance(e, _network_errors()):
        return HubError(f"cannot reach {host} for {what} ({type(e).__name__}). Check the network and retry: "
                        "the files already finished are kept in the cache.")
    if isinstance(e, OSError):
        return HubError(f"writing {what} failed: {e}. Check free disk space and permissions of the cache folder.")
    return HubError(f"downloading {what} failed: {type(e).__name__}: {e}")


def _network_errors() -> tuple[type, ...]:
    """Connection failures of whichever HTTP client this huggingface_hub uses (httpx2 or httpx)."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        kinds += [lib.ConnectError, lib.TimeoutException, lib.RemoteProtocolError, lib.NetworkError]
    return tuple(kinds)
