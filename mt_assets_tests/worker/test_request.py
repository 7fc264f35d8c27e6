"""A RunPod job's input as a render job: the job id, return_video, media references; and redaction."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mt_assets.jobs.schema import JobError
from mt_assets.worker.redact import redact
from mt_assets.worker.request import fetch_media, job_id_from_runpod, parse_request
from mt_assets_tests.worker.conftest import tiny_job


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "volume" / "media").mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    return tmp_path / "volume", tmp_path / "scratch"


def parse(
    roots: tuple[Path, Path], job_input: object, *, runpod_id: str = "rp-1", output_s3: str | None = None
):
    volume, scratch = roots
    return parse_request(
        job_input, runpod_id=runpod_id, volume_root=volume, scratch=scratch, output_s3=output_s3
    )


def test_runpod_job_ids_are_made_to_fit_the_job_id_rules() -> None:
    assert (
        job_id_from_runpod("2f4c8a1e-5b7d-4e1f-9a3c-6d8e0b2f4a1c-u1")
        == "2f4c8a1e-5b7d-4e1f-9a3c-6d8e0b2f4a1c-u1"
    )
    assert job_id_from_runpod("sync/a1:b2.c3") == "sync_a1_b2_c3"
    long_a, long_b = "x" * 70 + "a", "x" * 70 + "b"
    assert len(job_id_from_runpod(long_a)) == 64 and job_id_from_runpod(long_a) != job_id_from_runpod(long_b)
    assert job_id_from_runpod(long_a).startswith("x" * 55 + "-")


def test_the_input_id_wins_over_runpods_and_return_video_defaults_by_the_bucket(roots) -> None:
    assert parse(roots, tiny_job(id="mine")).job.id == "mine"
    assert parse(roots, tiny_job()).job.id == "rp-1"
    assert parse(roots, tiny_job()).return_video == "volume"
    assert parse(roots, tiny_job(), output_s3="s3://b/p").return_video == "s3"
    assert parse(roots, tiny_job(return_video="base64"), output_s3="s3://b/p").return_video == "base64"


def test_relative_references_are_relative_to_the_volume_and_confined_to_it(roots) -> None:
    volume, _ = roots
    request = parse(roots, tiny_job(cond_image="media/face.png"))
    assert request.job.cond_image == str((volume / "media" / "face.png").resolve())
    with pytest.raises(
        JobError, match=r"render job runpod:rp-1: field 'cond_image': '\.\./x\.png' is outside"
    ):
        parse(roots, tiny_job(cond_image="../x.png"))


def test_https_and_data_references_get_a_scratch_path_and_are_shown_without_secrets(roots) -> None:
    _, scratch = roots
    url = "https://bucket.example.com/in/face.PNG?X-Amz-Signature=abc123secret&X-Amz-Expires=60"
    data = "data:audio/wav;base64," + base64.b64encode(b"RIFF" * 100).decode()
    request = parse(roots, tiny_job(cond_image=url, cond_audio={"person1": data}))
    assert request.job.cond_image == str((scratch / "cond_image.png").resolve())
    assert request.job.cond_audio == (str((scratch / "cond_audio.person1.wav").resolve()),)
    assert request.media == {
        "cond_image": "https://bucket.example.com/in/face.PNG?…",
        "cond_audio.person1": f"data:audio/wav;base64,… ({len(data)} characters)",
    }
    assert "abc123secret" not in repr(request.job.to_json())


def test_a_bad_data_uri_is_named_by_its_field_when_fetched(roots) -> None:
    request = parse(roots, tiny_job(cond_audio={"person1": "data:audio/wav;base64,not base64!"}))
    with pytest.raises(
        JobError,
        match=r"field 'cond_audio.person1': data:audio/wav;base64,… \(\d+ characters\): the data is not valid base64",
    ):
        fetch_media(request)


def test_secrets_signatures_and_payloads_are_redacted() -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "HF_TOKEN": "hf_abcdef",
        "TOKENIZERS_PARALLELISM": "false",
        "MT_VOLUME": "/runpod-volume",
    }
    text = (
        "key s3cr3t-value, token hf_abcdef, at https://user:pw@host/a.wav?X-Amz-Signature=sig: refused; "
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg== in /runpod-volume (false)"
    )
    assert redact(text, env) == (
        "key ***, token ***, at https://***@host/a.wav?…: refused; data:image/png;base64,… (46 characters) "
        "in /runpod-volume (false)"
    )


def test_redaction_shows_every_url_as_shown_ref_does() -> None:
    text = (
        "output s3://b/p?X-Amz-Signature=sig, endpoint (http://u:pw@127.0.0.1:9000/?x=1) and "
        "'https://h/a.png#frag' at s3://b/key."
    )
    assert redact(text, {}) == (
        "output s3://b/p?…, endpoint (http://***@127.0.0.1:9000/?…) and 'https://h/a.png' at s3://b/key."
    )
    assert redact(redact(text, {}), {}) == redact(text, {})  # what is shown already stays as it is


def test_output_s3_in_the_input_is_only_a_check_against_the_workers_own(roots) -> None:
    assert parse(roots, tiny_job(output_s3="s3://b/p"), output_s3="s3://b/p").return_video == "s3"
    with pytest.raises(
        JobError,
        match=r"field 'output_s3': 's3://other/x': this worker uploads to its own MT_OUTPUT_S3 only \(s3://b/p\)",
    ):
        parse(roots, tiny_job(output_s3="s3://other/x"), output_s3="s3://b/p")
    with pytest.raises(JobError, match=r"field 'output_s3': .*\(not set\)"):
        parse(roots, tiny_job(output_s3="s3://b/p"))


def test_an_output_s3_mismatch_shows_no_query_string(roots) -> None:
    with pytest.raises(JobError) as caught:
        parse(roots, tiny_job(output_s3="s3://b/p?X-Amz-Signature=abc123secret"), output_s3="s3://b/p")
    assert (
        "field 'output_s3': 's3://b/p?…': this worker uploads to its own MT_OUTPUT_S3 only (s3://b/p)"
        in str(caught.value)
    )
    assert "abc123secret" not in str(caught.value)
    with pytest.raises(JobError, match=r"field 'output_s3': a mapping: this worker"):
        parse(roots, tiny_job(output_s3={"url": "https://h/x?X-Amz-Signature=abc123secret"}))
