from emulator.moto_lightsail.responses import LightsailResponse

url_bases = [r"https?://lightsail\.(.+)\.amazonaws\.com"]

url_paths = {"{0}/$": LightsailResponse.dispatch}
