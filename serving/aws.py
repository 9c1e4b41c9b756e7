"""The one AWS call the server makes, KMS `Decrypt`, with the pod's own identity: a small
Signature Version 4 client on the standard library instead of botocore (docs/image.md: botocore
and its dependencies would add ~36 MB to a ~230 MB image for this one call).

Credentials, in the order botocore's chain takes them (the sources a pod has):
1. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN);
2. IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE -> STS AssumeRoleWithWebIdentity (the token
   file is the pod's projected service-account token; the call itself is not signed);
3. EKS Pod Identity (and ECS): AWS_CONTAINER_CREDENTIALS_FULL_URI (+ the token in
   AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE / _TOKEN), or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI.
Endpoints: AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else the
region's public endpoint (the region from the key's ARN; STS: AWS_REGION). Tests point them at
moto in server mode on 127.0.0.1 (tests/serving/test_sealed.py).
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

#: Seconds one HTTP call may take, and tries for a call that fails in a way worth retrying.
TIMEOUT_SECONDS = 10.0
ATTEMPTS = 3
_RETRY_CODES = frozenset({"ThrottlingException", "KMSInternalException", "InternalFailure",
                          "ServiceUnavailable", "RequestTimeout"})
#: Hosts a container credentials URI may name over plain http (botocore's rule): the ECS and
#: EKS Pod Identity agents' link-local addresses and the loopback.
_CONTAINER_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23")


class AwsError(Exception):
    """`code` is AWS's error type (e.g. AccessDeniedException) or a local reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "environment"


def region_of(key_arn: str) -> str | None:
    parts = key_arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[0] == "arn" and parts[3] else None


def endpoint(service: str, region: str, env) -> str:
    url = env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL")
    if url:
        return url.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://{service}.{region}.{suffix}"


# -- Signature Version 4 ------------------------------------------------------------------------
def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(method: str, url: str, headers: dict[str, str], body: bytes, creds: Credentials,
         region: str, service: str, now: datetime.datetime | None = None) -> dict[str, str]:
    """`headers` plus X-Amz-Date, X-Amz-Security-Token and Authorization (SigV4, all headers
    signed). The request has no query string (KMS's JSON protocol)."""
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    out = {**headers, "host": parts.netloc, "x-amz-date": amz_date}
    if creds.token:
        out["x-amz-security-token"] = creds.token
    canonical = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    signed = ";".join(sorted(canonical))
    request = "\n".join([method, urllib.parse.quote(parts.path or "/", safe="/-_.~"), "",
                         "".join(f"{k}:{canonical[k]}\n" for k in sorted(canonical)), signed,
                         hashlib.sha256(body).hexdigest()])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + creds.secret_key).encode(), day), region), service),
                "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    del out["host"]          # urllib sends it from the URL, exactly as signed
    return out


def _send(request: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, response.read(1 << 20)
    except urllib.error.HTTPError as e:
        return e.code, e.read(1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise AwsError("ConnectionError", f"{request.full_url}: {reason}") from None


# -- credentials ----------------------------------------------------------------------------
def credentials(env, region: str) -> Credentials:
    """The pod's credentials (see the module docstring); AwsError when there are none."""
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                           env.get("AWS_SESSION_TOKEN") or None, "environment")
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") and env.get("AWS_ROLE_ARN"):
        return _web_identity(env, env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or region)
    if env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or \
            env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        return _container(env)
    raise AwsError("NoCredentials", "no AWS credentials: give the pod an identity (IRSA: "
                                    "AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE; EKS Pod "
                                    "Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI)")


def _web_identity(env, region: str) -> Credentials:
    path = env["AWS_WEB_IDENTITY_TOKEN_FILE"]
    try:
        token = open(path).read().strip()
    except OSError as e:
        raise AwsError("NoCredentials", f"AWS_WEB_IDENTITY_TOKEN_FILE {path}: "
                                        f"{e.strerror}") from None
    form = urllib.parse.urlencode({
        "Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
        "RoleArn": env["AWS_ROLE_ARN"],
        "RoleSessionName": env.get("AWS_ROLE_SESSION_NAME") or f"servedmodel-{int(time.time())}",
        "WebIdentityToken": token}).encode()
    url = endpoint("sts", region, env) + "/"
    status, data = _send(urllib.request.Request(url, data=form, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}))
    try:
        root = ET.fromstring(data)
    except ET.ParseError:
        raise AwsError("STSError", f"AssumeRoleWithWebIdentity answered {status} with no "
                                   f"XML") from None
    values = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
    if status != 200 or not values.get("AccessKeyId"):
        raise AwsError(values.get("Code") or "STSError",
                       f"AssumeRoleWithWebIdentity for {env['AWS_ROLE_ARN']}: "
                       f"{values.get('Message') or status}")
    return Credentials(values["AccessKeyId"], values["SecretAccessKey"],
                       values.get("SessionToken") or None, "web identity (IRSA)")


def _container(env) -> Credentials:
    url = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or (
        "http://169.254.170.2" + env["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"])
    host = urllib.parse.urlsplit(url).hostname or ""
    if urllib.parse.urlsplit(url).scheme != "https" and not _local_host(host):
        raise AwsError("NoCredentials", f"AWS_CONTAINER_CREDENTIALS_FULL_URI {url} must be "
                                        f"https or the credentials agent's local address")
    headers = {}
    token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
    if env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"):
        try:
            token = open(env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"]).read().strip()
        except OSError as e:
            raise AwsError("NoCredentials", f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: "
                                            f"{e.strerror}") from None
    if token:
        headers["Authorization"] = token
    status, data = _send(urllib.request.Request(url, headers=headers))
    try:
        doc = json.loads(data)
        return Credentials(doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token"),
                           "container credentials (EKS Pod Identity)")
    except (ValueError, KeyError, TypeError):
        raise AwsError("NoCredentials", f"the container credentials endpoint answered "
                                        f"{status} without credentials") from None


def _error_document(data: bytes) -> dict:
    """KMS answers JSON (`__type`, `message`); a signature or IAM refusal in front of it may
    come as an XML ErrorResponse (`Code`, `Message`)."""
    try:
        doc = json.loads(data) if data else {}
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        pass
    try:
        return {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in ET.fromstring(data).iter()}
    except ET.ParseError:
        return {}


def _local_host(host: str) -> bool:
    if host in _CONTAINER_HOSTS or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- KMS ------------------------------------------------------------------------------------
def kms_decrypt(key_arn: str, ciphertext: bytes, context: dict[str, str], env=None) -> bytes:
    """KMS Decrypt of a data key under `key_arn` with its encryption context; the plaintext
    key. AwsError (code: AWS's error type) on any failure."""
    env = os.environ if env is None else env
    region = region_of(key_arn) or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        raise AwsError("InvalidKeyId", f"{key_arn} is not a KMS key ARN with a region")
    creds = credentials(env, region)
    url = endpoint("kms", region, env) + "/"
    body = json.dumps({"KeyId": key_arn, "CiphertextBlob": base64.b64encode(ciphertext).decode(),
                       "EncryptionContext": context}).encode()
    error = None
    for attempt in range(ATTEMPTS):
        headers = sign("POST", url, {"content-type": "application/x-amz-json-1.1",
                                     "x-amz-target": "TrentService.Decrypt"}, body, creds,
                       region, "kms")
        try:
            status, data = _send(urllib.request.Request(url, data=body, method="POST",
                                                        headers=headers))
        except AwsError as e:
            error = e
        else:
            doc = _error_document(data)
            if status == 200 and isinstance(doc.get("Plaintext"), str):
                return base64.b64decode(doc["Plaintext"])
            code = str(doc.get("__type") or doc.get("Code") or f"HTTP{status}").rsplit("#", 1)[-1]
            error = AwsError(code, str(doc.get("message") or doc.get("Message") or status)[:300])
            if code not in _RETRY_CODES and status < 500:
                break
        time.sleep(0.2 * 2 ** attempt)
    assert error is not None        # every attempt that did not return set it
    raise error
