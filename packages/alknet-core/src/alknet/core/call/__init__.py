"""alknet.core.call"""
