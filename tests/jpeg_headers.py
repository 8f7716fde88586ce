"""JPEG bytes whose header lies about the image, for the decoder's and builder's tests."""


def declaring(image: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF) declares another size: its data is as short."""
    data, at = bytearray(image), 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments to the SOF
        at += 2 + int.from_bytes(data[at + 2 : at + 4], 'big')
    data[at + 5 : at + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(data)
