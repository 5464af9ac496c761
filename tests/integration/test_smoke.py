import pgqueue


def test_enqueue_and_get(conn):
    job_id = pgqueue.add_job_to_queue(conn, name="hello", data={"a": 1})
    job = pgqueue.get_job(conn, job_id)
    assert job is not None
    assert job.name == "hello"
    assert job.data == {"a": 1}
    assert job.status is pgqueue.JobStatus.PENDING
