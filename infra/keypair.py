"""An Ed25519 key pair for local runs of the Lambda functions, made with openssl as
infra/make-keys.sh makes the deployed one."""

import subprocess


def ed25519(directory):
    """(private PKCS#8 PEM, public SPKI PEM), written into `directory` on the way."""
    private, public = directory / "private.pem", directory / "public.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", private], check=True)
    subprocess.run(["openssl", "pkey", "-in", private, "-pubout", "-out", public], check=True,
                   stdout=subprocess.DEVNULL)
    return private.read_text(), public.read_text()
